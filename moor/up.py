"""`moor up`: run the whole engine on this machine, and own what it starts.

It starts the embedded Redis (unless MOOR_REDIS_URL or --redis-url names one) and gives
it one ACL user per role with the default user off (moor.embedded.acl), then the
reducer, this host's worker and the Docker API as child processes, each speaking to
Redis as its role, and prints which process is which. A child that dies after running a
while is restarted; one that dies at once (no root for the worker, a busy socket) stops
everything.

On Ctrl-C, SIGTERM or SIGHUP it stops its children, then the embedded Redis if this
`moor up` started it (one it found running, it leaves). Containers keep running (live
restore): their supervisors are not its children.

`kill -9` of `moor up`: each child gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and
stops cleanly; the Redis it started keeps running, and `<data root>/up.json` says so. The
next `moor up` takes the lock (`up.lock`, released by the kernel when its holder dies),
waits for the old children to finish, and adopts that Redis as its own.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.config import data_root, named_redis_url
from workers.proc.process import start_ticks

__all__ = ["run"]

STOP_GRACE = 15.0  # seconds a child gets to stop on SIGTERM before SIGKILL
STEADY = 5.0  # a child that ran this long and died is restarted; sooner, it is a failure

# (title, argv after `moor`, what killing it does): printed at start, and in the README.
CHILDREN = (
    ("moor reducer", ["reducer"],
     "safe: moor up restarts it; commands wait meanwhile, nothing is lost"),
    ("moor worker", ["worker"],
     "safe: containers keep running; moor up restarts it and it reconciles"),
    ("moor api", ["api"], "safe: moor up restarts it; docker clients reconnect"),
)


@dataclass
class Child:
    """One program `moor up` runs, and its current process."""

    title: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    started: float


class AlreadyUp(RuntimeError):
    """Another `moor up` holds this data root."""



def _hold_lock(root: str) -> int:
    """Take `<root>/up.lock` for our lifetime (not inherited by children); raise AlreadyUp."""
    fd = os.open(os.path.join(root, "up.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        other = _read_record(root).get("pid", "?")
        raise AlreadyUp(f"another moor up (pid {other}) runs on {root}") from None
    return fd


def _read_record(root: str) -> dict[str, object]:
    try:
        data = json.loads(Path(root, "up.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(root: str, redis: tuple[int, int | None] | None,
                  children: list[Child]) -> None:
    """Record what this `moor up` owns, for the next one if this one is killed."""
    record = {
        "pid": os.getpid(),
        "redis": list(redis) if redis else None,  # [pid, start ticks] of a Redis we own
        "children": [[c.proc.pid, start_ticks(c.proc.pid)] for c in children],
    }
    tmp = Path(root, "up.json.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, Path(root, "up.json"))


def _same_process(entry: object) -> int | None:
    """Return the pid of a recorded [pid, ticks] if that very process still runs."""
    if not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], int):
        return None
    pid, ticks = entry
    return pid if ticks is not None and start_ticks(pid) == ticks else None


def _take_over(root: str) -> dict[str, object]:
    """Wait for a killed `moor up`'s children to stop (their death signal is on the way)."""
    previous = _read_record(root)
    children = previous.get("children")
    deadline = time.monotonic() + STOP_GRACE
    for entry in children if isinstance(children, list) else []:
        while _same_process(entry) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = _same_process(entry)
        if pid is not None:  # still there: it was ours, make sure it goes
            os.kill(pid, signal.SIGKILL)
    return previous


def _redis(args: argparse.Namespace, root: str, previous: dict[str, object]
           ) -> tuple[str, tuple[int, int | None] | None, str]:
    """Return (URL, the embedded Redis we own or None, a line saying which)."""
    from moor.embedded import ensure_embedded, named_redis_url

    explicit = named_redis_url(args.redis_url)
    if explicit:
        return explicit, None, f"redis {explicit} (not ours: left running)"

    server = ensure_embedded(root)
    mine = (server.pid, start_ticks(server.pid))
    if server.started:
        how = "started now; stopped with moor up"
    elif _same_process(previous.get("redis")) == server.pid:
        how = "left by a killed moor up, adopted; stopped with moor up"
    else:
        return server.url, None, f"redis {server.url} pid {server.pid} (found running; " \
            "left running)"
    return server.url, mine, f"redis {server.url} pid {server.pid} ({how})"


def _options(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """Return the flags of `moor up` that one child program takes."""
    if argv == ["worker"] and args.no_reconcile:
        return ["--no-reconcile"]
    if argv == ["api"] and args.group:
        return ["--group", args.group]
    return []


def _programs(args: argparse.Namespace, shards: int) -> list[tuple[str, list[str], str]]:
    """Return (title, argv, what killing it does) of each child: with several shards, a
    reducer and a worker per shard (each shard its own single writer and engine)."""
    programs = []
    for title, argv, effect in CHILDREN:
        flags = _options(args, argv)
        if argv == ["api"] or shards == 1:
            programs.append((title, [*argv, *flags], effect))
            continue
        for shard in range(shards):
            programs.append((f"{title} {shard}/{shards}",
                             [*argv, "--shard", str(shard), *flags], effect))
    return programs


def _metrics_socket() -> socket.socket | None:
    """Bind the metrics address (MOOR_METRICS_ADDR, else a free loopback port) for the
    reducer to serve on; None when MOOR_METRICS_ADDR is "off"."""
    from engine.config import metrics_addr
    from engine.errors import InvalidParameter
    from engine.metrics_http import listen

    addr = metrics_addr()
    if addr is None:
        return None
    try:
        return listen(*addr)
    except OSError as exc:  # e.g. the port is taken: say which setting to change
        raise InvalidParameter(f"metrics: cannot listen on {addr[0]}:{addr[1]} ({exc}); "
                               "set MOOR_METRICS_ADDR") from None


def _spawn(title: str, argv: list[str], env: dict[str, str],
           metrics: socket.socket | None = None) -> Child:
    from engine.config import METRICS_FD
    from moor.lifeline import die_with_parent

    fds: tuple[int, ...] = ()
    if metrics is not None and argv[:1] == ["reducer"] and argv[1:3] in ([], ["--shard", "0"]):
        # The reducer serves /metrics on the socket we bound: the same address across
        # its restarts, and scrapes wait in the backlog while it restarts.
        fds = (metrics.fileno(),)
        env = dict(env, **{METRICS_FD: str(metrics.fileno())})
    # Its own process group: Ctrl-C reaches moor up alone, which stops the children in
    # order. PDEATHSIG: they stop too if moor up is killed outright.
    proc = subprocess.Popen([sys.executable, "-m", "moor.cli", *argv], env=env,
                            stdin=subprocess.DEVNULL, process_group=0, pass_fds=fds,
                            preexec_fn=die_with_parent(os.getpid()))
    return Child(title=title, argv=argv, proc=proc, started=time.monotonic())


def _describe(children: list[Child], effects: list[str], redis_line: str,
              metrics: socket.socket | None) -> None:
    from engine.metrics_http import url_of

    host = socket.gethostname()
    print(f"moor up: {redis_line}", flush=True)
    if metrics is not None:
        print(f"moor up: metrics: {url_of(metrics)}", flush=True)
    print(f"moor up: pid {os.getpid():<7} moor up            stops everything below with "
          "Ctrl-C or SIGTERM (containers keep running)", flush=True)
    for child, effect in zip(children, effects, strict=True):
        name = f"{child.title} {host}" if child.title == "moor worker" else child.title
        print(f"moor up: pid {child.proc.pid:<7} {name:<18} if killed: {effect}", flush=True)
    print("moor up: moor-supervisor <id>       one per container: killing one kills that "
          "container", flush=True)


def _stop(children: list[Child]) -> None:
    for child in children:  # our own children, by PID
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def run(args: argparse.Namespace) -> int:
    """Run the engine until Ctrl-C/SIGTERM/SIGHUP; return 0, or 1 if a child failed."""
    root = data_root()
    os.makedirs(root, exist_ok=True)
    try:
        lock = _hold_lock(root)
    except AlreadyUp as exc:
        print(f"moor up: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    owned: tuple[int, int | None] | None = None
    children: list[Child] = []
    failed = False
    metrics: socket.socket | None = None
    try:
        url, owned, redis_line = _redis(args, root, _take_over(root))
        metrics = _metrics_socket()
        from engine.config import key_prefix, shard_count
        from engine.keys import keys_for

        shards = args.shards or shard_count()
        every = [keys_for(str(i), prefix=key_prefix(), count=shards) for i in range(shards)]
        if not named_redis_url(args.redis_url):
            from moor.embedded.acl import provision

            print(f"moor up: {provision(root, every[0], tuple(every[1:]))}", flush=True)
        env = dict(os.environ, MOOR_REDIS_URL=url, MOOR_SHARDS=str(shards))
        env.pop("MOOR_PRINCIPAL", None)  # each program speaks as its own role
        env.pop("MOOR_SHARD", None)
        programs = _programs(args, shards)
        children = [_spawn(title, argv, env, metrics) for title, argv, _ in programs]
        _write_record(root, owned, children)
        _describe(children, [effect for _, _, effect in programs], redis_line, metrics)
        while not stop.is_set() and not failed:
            stop.wait(0.2)
            for i, child in enumerate(children):
                if stop.is_set() or child.proc.poll() is None:
                    continue
                code = child.proc.returncode
                if time.monotonic() - child.started < STEADY:
                    print(f"moor up: {child.title} exited with {code} at start; stopping",
                          file=sys.stderr, flush=True)
                    failed = True
                    break
                print(f"moor up: {child.title} exited with {code}; restarting", flush=True)
                children[i] = _spawn(child.title, child.argv, env, metrics)
                _write_record(root, owned, children)
    finally:
        _stop(children)
        if metrics is not None:
            metrics.close()
        if owned is not None:
            from moor.embedded import stop_embedded

            stop_embedded(root)
        Path(root, "up.json").unlink(missing_ok=True)
        os.close(lock)
    print("moor up: stopped", flush=True)
    return 1 if failed else 0
