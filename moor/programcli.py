"""The long-running programs, as `moor` subcommands: reducer, worker, api, up.

Each names its process (`moor reducer`, `moor worker HOST`, `moor api`, `moor up`) so
that `ps` tells them apart from each other and from the supervisors
(`moor-supervisor <id>`), and imports its runtime only when it starts. The titles go
through workers.proc.title, the one home of setproctitle's use (SPT_NOENV).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from moor.failures import guard

__all__ = ["register"]


def _set_title(title: str) -> None:
    """Show this process as `title` in ps (loaded late: reads must not import workers/)."""
    from workers.proc.title import set_title

    set_title(title)


def _reducer(args: argparse.Namespace) -> int:
    """Run the single writer (standby until it holds the lease) until SIGTERM/SIGINT."""
    _set_title("moor reducer")
    from commands.client import Client
    from engine.config import default_network, load_policy, shard_count, shard_of_process
    from engine.errors import MoorError
    from engine.reducer import Reducer
    from moor.connect import queue_redis, redis_and_keys

    policy = load_policy(args.policy)
    shard, count = shard_of_process(args.shard), shard_count()
    r, keys = redis_and_keys(args.redis_url, role="reducer", shard=shard)
    if count > 1:
        _set_title(f"moor reducer {shard}/{count}")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    reducer = Reducer(r, keys, lease_ms=args.lease_ms, batch=args.batch, policy=policy,
                      queue_redis=queue_redis(args.redis_url, role="reducer"),
                      sweeper=_sweeper(args.redis_url) if count > 1 else None)
    failed: list[BaseException] = []

    def lead() -> None:
        try:
            reducer.run(stop)
        except BaseException as exc:  # a supervisor must see the failure: exit non-zero
            logging.getLogger("moorage.reducer").exception("reducer failed")
            failed.append(exc)

    thread = threading.Thread(target=lead, name="reducer")
    thread.start()
    if not args.no_default_network:
        try:
            Client(r, keys, actor="moor-reducer", timeout=30,
                   inbox=keys.reducer_inbox()).define_network(default_network(shard, count))
        except MoorError as err:
            logging.getLogger("moorage").warning("default network: %s", err.message)
    while thread.is_alive():
        thread.join(0.5)
    return 1 if failed else 0


def _sweeper(redis_url: str | None) -> Any:
    """The reservation sweep of a sharded reducer: it reads the other shards' snapshots."""
    from engine.config import shard_count
    from engine.reservations import ReservationSweeper
    from moor.connect import shard_stores

    stores = shard_stores(redis_url, role="reducer")
    return ReservationSweeper(stores.__getitem__, shard_count())


def _shards(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"invalid shard count {text!r} (1 to 64)")
    return int(text)


def _worker(args: argparse.Namespace) -> int:
    """Run this host's worker (root) until SIGTERM/SIGINT."""
    from moor.embedded import resolve_redis_url

    url = resolve_redis_url(args.redis_url)
    if os.geteuid() != 0:
        print("moor worker needs root (mounts, namespaces, links)", file=sys.stderr)
        return 1
    _host_env(args)
    if args.shard is not None:  # read by everything it forks too (engine.config.engine_id)
        from engine.config import shard_of_process

        os.environ["MOOR_SHARD"] = shard_of_process(args.shard)
    # Named before serve(): the supervisors it forks rename themselves moor-supervisor.
    title = f"moor worker {os.environ.get('MOOR_HOST_ID') or socket.gethostname()}"
    _set_title(title)
    _keep_title_under_rq(title)
    from workers.service import serve

    return serve(url, burst=args.burst, reconcile_first=not args.no_reconcile)


def _host_env(args: argparse.Namespace) -> None:
    """Put --host-id, --host-label and --capacity in the environment (MOOR_HOST_*), where
    the worker and everything it forks read them (engine.config: the engine id too)."""
    if args.host_id:
        os.environ["MOOR_HOST_ID"] = args.host_id
    if args.host_label:
        os.environ["MOOR_HOST_LABELS"] = ",".join(args.host_label)
    if args.capacity is not None:
        os.environ["MOOR_HOST_CAPACITY"] = str(args.capacity)


def _keep_title_under_rq(title: str) -> None:
    """Keep `title` in front when rq retitles its worker on every state change.

    rq calls setproctitle("rq:worker:<uuid>: Listening on <queue>") whenever the library
    is installed, which would hide which program this is (and look like any rq worker).
    Its module-level `setprocname` is the one hook: ours keeps rq's state after our name.
    """
    import rq.worker

    module = sys.modules[rq.worker.SimpleWorker.procline.__module__]
    if hasattr(module, "setprocname"):
        setattr(module, "setprocname",  # noqa: B010 (mypy does not know the attribute)
                lambda text: _set_title(f"{title}: {text.split(': ', 1)[-1]}"))


def _api(args: argparse.Namespace) -> int:
    _set_title("moor api")
    from moor.api.server import run

    return run(args)


def _up(args: argparse.Namespace) -> int:
    _set_title("moor up")
    from moor.up import run

    return run(args)


def _tcp(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _also_here(p: argparse.ArgumentParser, *flags: str) -> None:
    """Accept global flags after the subcommand too (`moor api --redis-url X`), as the
    separate programs did; SUPPRESS keeps the global value when the flag is absent."""
    if "--redis-url" in flags:
        p.add_argument("--redis-url", default=argparse.SUPPRESS,
                       help="default: MOOR_REDIS_URL, else the embedded Redis")
    if "--timeout" in flags:
        p.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                       help="seconds to wait for the engine's outcomes")
    if "-v" in flags:
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="log every request")


def register(sub: Any) -> None:
    """Add reducer, worker, api and up to `moor`'s parser."""
    p = sub.add_parser("reducer", help="run the single writer (standby until it leads)")
    p.add_argument("--lease-ms", type=int, default=3000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--no-default-network", action="store_true")
    p.add_argument("--shard", default=None, metavar="N",
                   help="the shard to lead (MOOR_SHARD; 0 to MOOR_SHARDS-1; default 0)")
    p.add_argument("--policy", default=None, metavar="FILE",
                   help="admission policy, JSON (default: MOOR_POLICY, else allow all)")
    p.set_defaults(func=guard(_reducer), log_level=logging.INFO, long_running=True)

    p = sub.add_parser("worker", help="run this host's worker (root)")
    _also_here(p, "--redis-url")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--no-reconcile", action="store_true")
    p.add_argument("--host-id", default=None, metavar="ID",
                   help="join the engine as this host (default: MOOR_HOST_ID; none: "
                        "single-host mode)")
    p.add_argument("--host-label", action="append", default=[], metavar="KEY=VALUE",
                   help="a label of the host, for placement constraints (repeatable; "
                        "default: MOOR_HOST_LABELS, comma-separated)")
    p.add_argument("--capacity", type=int, default=None, metavar="N",
                   help="how many containers the host takes (default: MOOR_HOST_CAPACITY "
                        "or 100)")
    p.add_argument("--shard", default=None, metavar="N",
                   help="the shard whose jobs this worker runs (MOOR_SHARD; default 0)")
    p.set_defaults(func=guard(_worker), log_level=logging.INFO, long_running=True)

    p = sub.add_parser("api", help="serve the Docker Engine API on a unix socket",
                       description="serve the Docker Engine API for moorage")
    p.add_argument("--socket", default=None,
                   help="unix socket path (default: $MOOR_DATA_ROOT/docker.sock)")
    p.add_argument("--tcp", type=_tcp, default=None, metavar="HOST:PORT",
                   help="also listen on TCP (no TLS: keep it on 127.0.0.1)")
    p.add_argument("--group", default=None, help="group that owns the socket")
    p.add_argument("--prefix", default=None,
                   help="Redis key prefix of the engine (default: MOOR_PREFIX or moor:v1)")
    p.add_argument("--threads", type=int, default=64, help="blocking-call thread pool")
    _also_here(p, "--redis-url", "--timeout", "-v")
    p.set_defaults(func=guard(_api), long_running=True)

    p = sub.add_parser("up", help="embedded Redis + reducer + worker + Docker API socket")
    p.add_argument("--no-reconcile", action="store_true",
                   help="start the worker without reconciling this host first")
    p.add_argument("--group", default=None,
                   help="group that owns the API socket (mode 0660), like dockerd's -G")
    p.add_argument("--shards", type=_shards, default=None, metavar="N",
                   help="run N shards, a reducer and a worker each (default: MOOR_SHARDS "
                        "or 1; fixed for the life of the data)")
    p.set_defaults(func=guard(_up), long_running=True)
