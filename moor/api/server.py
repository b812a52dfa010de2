"""`moor api`: serve the Docker Engine API on a unix socket (its flags: moor.programcli).

Why aiohttp: a mature asyncio HTTP server with unix-socket (and TCP) sites and streaming
responses, which `wait`, `events`, `logs` and `attach` need; blocking Redis calls run in
the loop's thread pool. The socket defaults to `$MOOR_DATA_ROOT/docker.sock`, mode 0660
(like dockerd's, root and an optional group), so `DOCKER_HOST=unix://...` drives moorage
with the docker CLI or docker-py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import stat
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from engine.config import data_root
from moor.api.app import build_app
from moor.api.context import ApiContext

__all__ = ["prepare_socket", "run", "serve", "socket_gid"]

log = logging.getLogger("moorage.api")


def socket_gid(group: str) -> int:
    """Return the gid of `--group` (a name or a number), as dockerd's -G takes it."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise SystemExit(f"moor api: group {group!r} not found") from None


def prepare_socket(path: str) -> None:
    """Make room for the socket: drop a stale one, refuse to steal a live one."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"moor api: {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody answers: left over by a daemon that died
            return
    raise SystemExit(f"moor api: another daemon is listening on {path}")


async def serve(args: argparse.Namespace, context: ApiContext) -> None:
    """Run the sites until SIGTERM or SIGINT, then close them and remove the socket."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=args.threads,
                                                 thread_name_prefix="moor-api"))
    runner = web.AppRunner(build_app(context), handler_cancellation=True,
                           access_log=log if args.verbose else None, shutdown_timeout=2.0)
    await runner.setup()
    prepare_socket(args.socket)
    old = os.umask(0o117)  # the socket is born 0660: no window where others may connect
    try:
        await web.UnixSite(runner, args.socket).start()
    finally:
        os.umask(old)
    os.chmod(args.socket, 0o660)
    if args.group:
        os.chown(args.socket, -1, socket_gid(args.group))
    where = [f"unix://{args.socket}"]
    if args.tcp:
        host, port = args.tcp
        await web.TCPSite(runner, host, port).start()
        where.append(f"tcp://{host}:{port}")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"moor api: listening on {' '.join(where)} (engine prefix {context.keys.prefix})",
          flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
    print("moor api: stopped", flush=True)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT with the flags of `moor api` (see moor.programcli)."""
    from moor.connect import redis_and_keys

    if args.group:
        socket_gid(args.group)  # an unknown group stops the server before it listens
    from engine.config import shard_count
    from moor.connect import on_cluster, shard_stores

    redis, keys = redis_and_keys(args.redis_url, prefix=args.prefix, role="control")
    args.socket = args.socket or os.path.join(data_root(), "docker.sock")
    # A sharded deployment: every shard's store; commands route, reads merge (ApiContext).
    shards = (shard_stores(args.redis_url, args.prefix, role="control")
              if shard_count() > 1 else None)
    context = ApiContext(redis=redis, keys=keys, data_root=os.path.realpath(data_root()),
                         timeout=args.timeout, shards=shards,
                         replicas=1 if on_cluster(args.redis_url) else 0)
    try:
        asyncio.run(serve(args, context))
    except KeyboardInterrupt:
        return 130
    return 0
