"""`moor api` / `python -m moor.api.server`: serve the Docker Engine API on a unix socket.

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
import sys
from concurrent.futures import ThreadPoolExecutor

import redis as redislib
from aiohttp import web

from engine.config import data_root, key_prefix
from engine.keys import keys_for
from moor.api.app import build_app
from moor.api.context import ApiContext

__all__ = ["main", "prepare_socket"]

log = logging.getLogger("moorage.api")


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


def _tcp(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


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
        os.chown(args.socket, 0, grp.getgrnam(args.group).gr_gid)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moor api",
                                     description="serve the Docker Engine API for moorage")
    parser.add_argument("--socket", default=None,
                        help="unix socket path (default: $MOOR_DATA_ROOT/docker.sock)")
    parser.add_argument("--tcp", type=_tcp, default=None, metavar="HOST:PORT",
                        help="also listen on TCP (no TLS: keep it on 127.0.0.1)")
    parser.add_argument("--group", default=None, help="group that owns the socket")
    parser.add_argument("--redis-url", help="default: MOOR_REDIS_URL, else the embedded Redis")
    parser.add_argument("--prefix", default=None,
                        help="Redis key prefix of the engine (default: MOOR_PREFIX or moor:v1)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the engine's outcomes")
    parser.add_argument("--threads", type=int, default=64, help="blocking-call thread pool")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    from moor.embedded import resolve_redis_url

    url = resolve_redis_url(args.redis_url)
    root = data_root()
    args.socket = args.socket or os.path.join(root, "docker.sock")
    context = ApiContext(redis=redislib.Redis.from_url(url),
                         keys=keys_for(prefix=args.prefix or key_prefix()),
                         data_root=root, timeout=args.timeout)
    try:
        asyncio.run(serve(args, context))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
