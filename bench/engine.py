"""Engine benchmarks (on demand, not in CI): fold, end-to-end, replay, watch latency.

    python -m bench.engine                 # defaults: 50k e2e commands, 1M replay events
    python -m bench.engine --events 200000 --commands 20000

Starts its own redis-server (AOF everysec) on a free port in a temp dir and stops it.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis

from commands import schema as c
from commands.client import Client, new_container_id
from commands.codec import CODEC
from engine.core.decider import apply_command
from engine.core.evolve import fold
from engine.core.state import World
from engine.eventlog import read_records
from engine.keys import Keys, keys_for
from engine.reducer import Reducer
from events.model import EventRecord
from events.specs import ContainerConfig, ImageConfig, NetworkSpec
from projections.journal import export_jsonl, import_jsonl
from projections.stream import watch

IMAGE = "sha256:" + "ab" * 32
NET = NetworkSpec(name="bridge", subnet="10.220.0.0/16", gateway="10.220.0.1", bridge="moor0")
CONFIG = ContainerConfig(image="busybox", cmd=("sleep", "60"))


def _env(n: int, cid: str = "", actor: str = "bench") -> c.Envelope:
    return c.Envelope(command_id=uuid.uuid4().hex, container_id=cid,
                      issued_at=1_800_000_000_000_000_000 + n, actor=actor)


def workload(n_commands: int) -> Iterator[tuple[c.Envelope, c.Command]]:
    """Yield a realistic lifecycle mix: create, start saga reports, stop, exit, remove."""
    yield _env(0), c.DefineNetwork(network=NET)
    yield _env(1), c.RegisterImage(image_id=IMAGE, repo_tags=("busybox:latest",),
                                   config=ImageConfig(cmd=("sh",)))
    i = 2
    while i < n_commands:
        cid = new_container_id()
        name = f"b{i}"
        steps: list[tuple[str, c.Command]] = [
            ("", c.CreateContainer(name=name, config=CONFIG)),
            ("", c.StartContainer(ref=name)),
            ("r", c.ReportMounted(generation=1)),
            ("r", c.ReportSandbox(generation=1)),
            ("r", c.ReportEndpoint(generation=1)),
            ("r", c.ReportProcessStarted(generation=1, pid=100, started_at=1)),
            ("", c.StopContainer(ref=name)),
            ("r", c.ReportProcessExited(generation=1, exit_code=143, finished_at=2)),
            ("", c.RemoveContainer(ref=name)),
            ("r", c.ReportRemoved(generation=1)),
        ]
        for kind, cmd in steps:
            target = cid if kind == "r" or isinstance(cmd, c.CreateContainer) else ""
            yield _env(i, target), cmd
            i += 1


def control_workload(n_commands: int) -> Iterator[tuple[c.Envelope, c.Command]]:
    """Yield commands that trigger no host job: create, rename, a stop of a stopped one."""
    yield _env(0), c.DefineNetwork(network=NET)
    yield _env(1), c.RegisterImage(image_id=IMAGE, repo_tags=("busybox:latest",),
                                   config=ImageConfig(cmd=("sh",)))
    i = 2
    while i < n_commands:
        name = f"c{i}"
        yield _env(i, new_container_id()), c.CreateContainer(name=name, config=CONFIG)
        yield _env(i + 1), c.RenameContainer(ref=name, new_name=f"r{i}")
        yield _env(i + 2), c.StopContainer(ref=f"r{i}")  # 304: recorded as a rejection
        i += 3


def bench_fold(n: int) -> tuple[list[EventRecord], dict[str, float]]:
    world = World()
    records: list[EventRecord] = []
    t0 = time.perf_counter()
    commands = 0
    for env, cmd in workload(n):
        records.extend(apply_command(world, env, cmd).records)
        commands += 1
    decide_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fold(records)
    fold_s = time.perf_counter() - t0
    return records, {"decide+evolve commands/s": commands / decide_s,
                     "pure fold events/s": len(records) / fold_s}




def bench_e2e(r: Any, keys: Keys, n: int, mix: str = "lifecycle") -> dict[str, float]:
    """Preload n commands, then time the reducer folding them through Redis.

    "lifecycle" hands a host job to rq for 4 of every 10 commands; "control" none.
    """
    pipe = r.pipeline(transaction=False)
    count = 0
    source = workload(n) if mix == "lifecycle" else control_workload(n)
    base_ms = time.time_ns() // 1_000_000
    for env, cmd in source:
        # Each to the inbox its writer uses; the ids keep the one order across them.
        stream = keys.reports if isinstance(cmd, c.REPORT_TYPES) else keys.commands
        pipe.xadd(stream, {"env": CODEC.encode(env), "cmd": CODEC.encode(cmd)},
                  id=f"{base_ms}-{count + 1}")
        count += 1
        if count % 1000 == 0:
            pipe.execute()
    pipe.execute()
    reducer = Reducer(r, keys, batch=1000)
    reducer.try_acquire()
    # The reducer is one thread: these shares of wall time do not overlap. The Lua write
    # runs while the next batch is decided, so only its unhidden part shows, as waiting.
    timers = {"read": 0.0, "prepare": 0.0, "decide": 0.0, "send": 0.0, "write": 0.0,
              "drain": 0.0}
    for name, part, attr in (("read", reducer.intake, "read"),
                             ("prepare", reducer.intake, "prepare"),
                             ("decide", reducer, "_decide"), ("send", reducer.writer, "send"),
                             ("write", reducer.writer, "write")):
        original = getattr(part, attr)

        def timed(*a: Any, _o: Any = original, _n: str = name, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _o(*a, **k)
            finally:
                timers[_n] += time.perf_counter() - t
        setattr(part, attr, timed)
    drain = reducer.outbox.drain

    def timed_drain(epoch: int | None = None) -> int:
        t = time.perf_counter()
        try:
            return drain(epoch)
        finally:
            timers["drain"] += time.perf_counter() - t
    reducer.outbox.drain = timed_drain  # type: ignore[method-assign]
    t0 = time.perf_counter()
    done = 0
    while done < count:
        reducer.renew()  # as run() does between steps
        done += reducer.step()
    total = time.perf_counter() - t0
    rest = 1 - sum(timers.values()) / total
    return {f"e2e {mix} commands/s": count / total,
            f"  {mix}: share read (unpipelined)": timers["read"] / total,
            f"  {mix}: share decode+dedupe": timers["prepare"] / total,
            f"  {mix}: share decide/encode": timers["decide"] / total,
            f"  {mix}: share send write": timers["send"] / total,
            f"  {mix}: share sync write": timers["write"] / total,
            f"  {mix}: share rq enqueue (outbox)": timers["drain"] / total,
            f"  {mix}: share wait on Redis": rest}


def bench_replay(r: Any, keys: Keys, records: list[EventRecord]) -> dict[str, float]:
    """Load records into an events stream, then replay from Redis and from an export."""
    pipe = r.pipeline(transaction=False)
    for i, record in enumerate(records, 1):
        pipe.xadd(keys.events, {"d": CODEC.encode(record)}, id=f"{i}-0")
        if i % 2000 == 0:
            pipe.execute()
    pipe.execute()
    t0 = time.perf_counter()
    fold(rec for _, rec in read_records(r, keys))
    from_redis = time.perf_counter() - t0
    buf = io.StringIO()
    export_jsonl(read_records(r, keys), buf)
    buf.seek(0)
    t0 = time.perf_counter()
    fold(rec for _, rec in import_jsonl(buf))
    from_file = time.perf_counter() - t0
    return {"replay from redis events/s": len(records) / from_redis,
            "replay from export events/s": len(records) / from_file}


def bench_watch(r: Any, keys: Keys, samples: int) -> dict[str, float]:
    """Time submit -> a watcher holding the event (through the running reducer)."""
    stop = threading.Event()
    seen: dict[str, int] = {}
    ready = threading.Event()

    def watcher() -> None:
        ready.set()
        for _, record in watch(redis.Redis(connection_pool=r.connection_pool), keys, "$",
                               block_ms=200, stop=stop.is_set):
            seen[record.meta.command_id] = time.perf_counter_ns()

    thread = threading.Thread(target=watcher, daemon=True)
    reducer = Reducer(r, keys, batch=500, block_ms=200)
    rstop = threading.Event()
    rthread = threading.Thread(target=reducer.run, args=(rstop,), daemon=True)
    rthread.start()
    client = Client(r, keys)
    client.define_network(NET)
    client.register_image(image_id=IMAGE, repo_tags=("busybox:latest",),
                          config=ImageConfig(cmd=("sh",)))
    thread.start()
    ready.wait()
    time.sleep(0.3)
    sent: dict[str, int] = {}
    for i in range(samples):
        cmd_id = uuid.uuid4().hex
        sent[cmd_id] = time.perf_counter_ns()
        client.send(c.CreateContainer(name=f"w{i}", config=CONFIG),
                    container_id=new_container_id(), command_id=cmd_id)
        time.sleep(0.005)
    time.sleep(0.5)
    stop.set()
    rstop.set()
    rthread.join(5)
    lat = sorted((seen[k] - v) / 1e6 for k, v in sent.items() if k in seen)
    return {"watch p50 ms": statistics.median(lat),
            "watch p99 ms": lat[int(len(lat) * 0.99) - 1], "watch samples": len(lat)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--watch-samples", type=int, default=1000)
    args = parser.parse_args()
    from tests.conftest import start_redis

    workdir = tempfile.mkdtemp(prefix="moor-bench-")
    server = start_redis(workdir)
    try:
        r = redis.Redis.from_url(server.url)
        print(f"redis-server {r.info()['redis_version']} AOF everysec, "
              f"cpus={os.cpu_count()}")
        # the fold benchmark also produces the replay corpus (about 0.9 events/command)
        records, numbers = bench_fold(int(args.events / 0.9) + 10)
        records = records[: args.events]
        print(f"fold corpus: {len(records)} events")
        numbers |= bench_e2e(r, keys_for(prefix="bench-e2e-c"), args.commands, "control")
        numbers |= bench_e2e(r, keys_for(prefix="bench-e2e-l"), args.commands, "lifecycle")
        numbers |= bench_replay(r, keys_for(prefix="bench-replay"), records)
        numbers |= bench_watch(r, keys_for(prefix="bench-watch"), args.watch_samples)
        for name, value in numbers.items():
            print(f"{name:38s} {value:14,.3f}")
    finally:
        server.proc.terminate()
        server.proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
