"""Reducer fold rate, repeated: medians of bench.engine's end-to-end fold (on demand).

    python -m bench.foldrate                      # 5 runs of 20k commands per mix
    python -m bench.foldrate --runs 7 --commands 50000
    python -m bench.foldrate --decide-only        # no Redis: decide_batch (+ metrics)

Runs bench.engine.bench_e2e (preload, then one reducer folds through Redis) several
times per mix on its own redis-server and prints each run and the median commands/s: the
number docs/decisions/0010-metrics.md compares before and after the reducer's metrics.
`--decide-only` times the reducer's in-memory part alone (decide_batch over batches of
500 lifecycle commands, then the metrics' per-batch hook when the tree has one): the
part the metrics add to, without Redis's noise.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from typing import Any

import redis

from bench.engine import bench_e2e, workload
from commands import schema as c
from engine.batch import Batch, decide_batch
from engine.core.admission import Origin
from engine.core.state import World
from engine.intake import Prepared
from engine.keys import CONTROL, REPORTS, keys_for
from engine.timers import RestartTimers

BATCH = 500


def bench_decide(n: int) -> float:
    """Return commands/s of decide_batch (and the metrics hook, if any) over n commands."""
    keys = keys_for(prefix="bench-decide")
    control, reports = Origin("control", CONTROL), Origin("worker", REPORTS)
    items = [(env.command_id, env, cmd,
              reports if isinstance(cmd, c.REPORT_TYPES) else control)
             for env, cmd in workload(n)]
    world, timers = World(), RestartTimers()
    metrics: Any = None
    if "tally" in Batch._fields:  # a tree with the metrics (compare with one without)
        from engine.metrics import ReducerMetrics
        metrics = ReducerMetrics()
    t0 = time.perf_counter()
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        acks = {keys.commands: [f"{start + i}-0" for i in range(len(chunk))]}
        began = time.perf_counter()
        batch = decide_batch(Prepared(chunk, acks, set()), world, timers, keys, epoch=1,
                             reply_ttl=300)
        if metrics is not None:
            metrics.written(batch, time.perf_counter() - began)
    return len(items) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--commands", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--decide-only", action="store_true")
    args = parser.parse_args()
    if args.decide_only:
        found = [bench_decide(args.commands) for _ in range(args.runs)]
        runs = " ".join(f"{x:,.0f}" for x in found)
        print(f"decide     median {statistics.median(found):10,.0f} commands/s  ({runs})")
        return
    from tests.conftest import start_redis

    workdir = tempfile.mkdtemp(prefix="moor-foldrate-")
    server = start_redis(workdir)
    try:
        r = redis.Redis.from_url(server.url)
        rates: dict[str, list[float]] = {"control": [], "lifecycle": []}
        for run in range(args.runs):
            for mix, found in rates.items():
                numbers = bench_e2e(r, keys_for(prefix=f"bench-fold-{mix}-{run}"),
                                    args.commands, mix)
                found.append(numbers[f"e2e {mix} commands/s"])
                r.flushall()  # each run starts from an empty server
        for mix, found in rates.items():
            runs = " ".join(f"{x:,.0f}" for x in found)
            print(f"{mix:10s} median {statistics.median(found):10,.0f} commands/s  ({runs})")
    finally:
        server.proc.terminate()
        server.proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
