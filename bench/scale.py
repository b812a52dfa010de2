"""Shards on a local Redis Cluster: commands/s with 1, 2 and 3 shards, and a failover.

    python3 -m bench.scale                       # 3 runs of 5 s per point, 3 failovers
    python3 -m bench.scale --runs 5 --seconds 8 --clients 2 --failovers 5

Starts a local Redis Cluster of 3 primaries + 3 replicas (tests.cluster.LocalCluster,
the fixture the cluster tests use) and a plain redis-server for rq's queues, then:

1. **Scaling.** For 1, 2 and 3 shards (keys_for(i, count=3): one shard per primary),
   one reducer per shard, each in its own process (the fold is CPU-bound Python; threads
   would share one GIL), and `--clients` client processes per shard driving the control
   mix of bench.engine (create, rename, a stop of a stopped container: no host job).
   A client keeps `--window` commands in flight: one pipeline of XADDs (the entries
   Client.send writes, reply requested), one of BLPOPs on their reply lists, and with
   WAIT one `WAIT 1` after the pops (what Client(replicas=1) does per command; here for
   the window). Prints the median commands/s of `--runs` runs of `--seconds` each, the
   efficiency per shard (rate(N) / (N x rate(1)); goal >= 0.8 while cores allow), with
   and without WAIT, and the round trip of one Client.submit with and without WAIT.
2. **Failover.** 3 shards under load, clients acknowledging with WAIT and retrying a
   failed command with the same command id; the primary owning shard 1 is killed with
   SIGKILL mid-run (its replica is promoted; the killed node is started again at once and
   rejoins as a replica, as a restarted host would). Prints, medians of `--failovers`:
   the promotion time, the time from the kill to the first command the shard's reducer
   decided after it (its first journal entry stamped after the kill; goal < 5 s), and
   per run the commands lost (acknowledged, absent from the journal; goal 0) and applied
   twice (goal 0), judged by tests.chaos.invariants.check_commands on every shard.

The machine's cores bound the scaling: every reducer, client and redis-server here
shares them (os.cpu_count() is printed).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import redis

from commands import schema as c
from commands.client import Client
from commands.codec import CODEC, CommandResult
from engine.cluster import shard_redis
from engine.keys import Keys, keys_for
from engine.reducer import Reducer
from events.specs import ContainerConfig
from tests.cluster import LocalCluster, id_in_shard

SHARDS = 3  # the deployment: keys of shard i of 3 live on the i-th primary
CONFIG = ContainerConfig(image="busybox", cmd=("sleep", "60"))
VICTIM = "1"  # the shard whose primary the failover kills
_CTX = mp.get_context("fork")  # children build their own connections


# --- processes ---------------------------------------------------------------------------

def _keys(prefix: str, shard: str) -> Keys:
    return keys_for(shard, prefix=prefix, count=SHARDS)


def _reducer_main(url: str, queue_url: str, prefix: str, shard: str, stop: Any) -> None:
    """One shard's reducer, until `stop` is set."""
    logging.basicConfig(level=logging.CRITICAL)  # a failover's warnings are expected
    keys = _keys(prefix, shard)
    reducer = Reducer(shard_redis(url, keys.tag), keys, queue_redis=redis.Redis.from_url(
        queue_url), batch=500, block_ms=100)
    reducer.run(stop)


def _control_mix(shard: str, tag: str) -> Iterator[tuple[str, c.Command]]:
    """bench.engine's control mix, with ids in the shard: (container id or "", command)."""
    i = 0
    while True:
        name = f"{tag}-{i}"
        yield id_in_shard(shard, SHARDS), c.CreateContainer(name=name, config=CONFIG)
        yield "", c.RenameContainer(ref=name, new_name=f"{name}r")
        yield "", c.StopContainer(ref=f"{name}r")  # 304: recorded as a rejection
        i += 1


def _load_main(url: str, prefix: str, shard: str, tag: str, replicas: int, window: int,
               start_at: float, seconds: float, out: Any) -> None:
    """Drive the control mix on one shard with `window` commands in flight; report
    (commands acknowledged, seconds from start_at to the last acknowledgement)."""
    keys = _keys(prefix, shard)
    r = shard_redis(url, keys.tag)
    mix = _control_mix(shard, tag)
    done = 0
    time.sleep(max(0.0, start_at - time.time()))
    end = start_at + seconds
    while time.time() < end:
        ids = []
        pipe = r.pipeline(transaction=False)
        for _ in range(window):
            cid, cmd = next(mix)
            env = c.Envelope(command_id=uuid.uuid4().hex, container_id=cid,
                             issued_at=time.time_ns(), actor="bench", reply=True)
            ids.append(env.command_id)
            pipe.xadd(keys.commands, CODEC.entry(env, cmd))
        pipe.execute()
        pipe = r.pipeline(transaction=False)
        for command_id in ids:
            pipe.blpop([keys.reply(command_id)], timeout=30)
        if replicas:
            pipe.execute_command("WAIT", replicas, 5000)
        replies = pipe.execute()
        if any(reply is None for reply in replies[:window]):
            raise SystemExit(f"shard {shard}: a reply did not come within 30 s")
        if replicas and int(replies[-1]) < replicas:
            raise SystemExit(f"shard {shard}: WAIT {replicas} answered {replies[-1]}")
        done += window
    out.put((done, time.time() - start_at))


def _ledger_main(url: str, prefix: str, shard: str, tag: str, stop: Any, out: Any) -> None:
    """The failover's client: the control mix one command at a time, acknowledged with
    WAIT 1 and retried with the same id; report every command and what it was told."""
    keys = _keys(prefix, shard)
    client = Client(shard_redis(url, keys.tag), keys, replicas=1, timeout=10, retry_for=60)
    mix = _control_mix(shard, tag)
    told: list[tuple[str, str, bool, bytes, str]] = []
    while not stop.is_set():
        cid, cmd = next(mix)
        command_id = uuid.uuid4().hex
        try:
            sub = client.submit(cmd, container_id=cid, command_id=command_id, check=False)
        except Exception as exc:  # not acknowledged: judged as such
            told.append((command_id, type(cmd).__name__, False, b"", str(exc)))
            continue
        told.append((command_id, type(cmd).__name__, True, msgspec.msgpack.encode(sub.result),
                     sub.last_event_id))
    out.put((shard, told))


# --- the two measurements -----------------------------------------------------------------

class Rig:
    """The cluster, the queue Redis, and the processes of one measurement."""

    def __init__(self, cluster: LocalCluster, queue_url: str) -> None:
        self.cluster = cluster
        self.queue_url = queue_url
        self.procs: list[Any] = []

    def seed(self, prefix: str, shard: str) -> None:
        from tests.harness import seed

        keys = _keys(prefix, shard)
        r = shard_redis(self.cluster.url, keys.tag)
        seed(Client(r, keys, replicas=1, timeout=30))
        r.close()

    def reducers(self, prefix: str, shards: list[str]) -> Any:
        stop = _CTX.Event()
        for shard in shards:
            p = _CTX.Process(target=_reducer_main, args=(self.cluster.url, self.queue_url,
                                                         prefix, shard, stop), daemon=True)
            p.start()
            self.procs.append(p)
        return stop

    def end(self, stop: Any) -> None:
        stop.set()
        for p in self.procs:
            p.join(15)
            if p.is_alive():  # our own child, by its PID
                p.kill()
                p.join(5)
        self.procs = []


def measure(rig: Rig, shards: int, replicas: int, clients: int, window: int,
            seconds: float) -> float:
    """Return the control mix's commands/s with `shards` shards."""
    prefix = f"bench-scale:{uuid.uuid4().hex[:8]}"
    names = [str(i) for i in range(shards)]
    stop = rig.reducers(prefix, names)
    try:
        for shard in names:
            rig.seed(prefix, shard)
        out = _CTX.Queue()
        start_at = time.time() + 1.0  # every client starts together
        loaders = [_CTX.Process(target=_load_main, args=(
            rig.cluster.url, prefix, shard, f"c{k}", replicas, window, start_at, seconds, out),
            daemon=True) for shard in names for k in range(clients)]
        for p in loaders:
            p.start()
        results = [out.get(timeout=seconds + 120) for _ in loaders]
        for p in loaders:
            p.join(10)
        return sum(n for n, _ in results) / max(t for _, t in results)
    finally:
        rig.end(stop)
        _drop(rig, prefix, names)


def round_trip(rig: Rig, replicas: int, n: int) -> tuple[float, float]:
    """p50 and p99 ms of one Client.submit (a create) on shard 0, with or without WAIT."""
    prefix = f"bench-rt:{uuid.uuid4().hex[:8]}"
    stop = rig.reducers(prefix, ["0"])
    try:
        rig.seed(prefix, "0")
        keys = _keys(prefix, "0")
        r = shard_redis(rig.cluster.url, keys.tag)
        client = Client(r, keys, replicas=replicas, timeout=30)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            client.create(CONFIG, name=f"rt{i}", container_id=id_in_shard("0", SHARDS))
            samples.append((time.perf_counter() - t0) * 1000)
        r.close()
    finally:
        rig.end(stop)
        _drop(rig, prefix, ["0"])
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def failover(rig: Rig, clients: int, before: float, after: float) -> dict[str, Any]:
    """Kill the victim shard's primary under load; return what it cost."""
    from tests.chaos.invariants import check_commands, check_replay
    from tests.chaos.journal import Journal, read_journal
    from tests.chaos.workload import Ledger, Sent

    cluster = rig.cluster
    prefix = f"bench-fo:{uuid.uuid4().hex[:8]}"
    names = [str(i) for i in range(SHARDS)]
    stop = rig.reducers(prefix, names)
    killed = None
    try:
        for shard in names:
            rig.seed(prefix, shard)
        halt, out = _CTX.Event(), _CTX.Queue()
        loaders = [_CTX.Process(target=_ledger_main, args=(
            cluster.url, prefix, shard, f"f{k}", halt, out), daemon=True)
            for shard in names for k in range(clients)]
        for p in loaders:
            p.start()
        time.sleep(before)
        tag = _keys(prefix, VICTIM).tag
        killed, promoted = cluster.fail_over(tag)
        # From the moment the dead primary was reaped: nothing it wrote is newer.
        kill_ms = int(killed.killed_at * 1000)
        promotion = time.time() - killed.killed_at
        assert not killed.alive and promoted.info("replication")["role"] == "master"
        cluster.restart(killed)  # the host comes back: WAIT 1 can be met again
        time.sleep(after)
        halt.set()
        told = dict.fromkeys(names, [])
        for _ in loaders:
            shard, items = out.get(timeout=120)
            told[shard] = told[shard] + items
        for p in loaders:
            p.join(10)
    finally:
        rig.end(stop)
        if killed is not None and not killed.alive:
            cluster.restart(killed)
    victim_keys = _keys(prefix, VICTIM)
    r = shard_redis(cluster.url, victim_keys.tag)
    first = r.xrange(victim_keys.events, min=f"{kill_ms + 1}-0", count=1)
    r.close()
    resume = (int(first[0][0].split(b"-")[0]) - kill_ms) / 1000 if first else float("nan")
    lost = twice = acked = 0
    bad: list[str] = []
    for shard in names:
        keys = _keys(prefix, shard)
        r = shard_redis(cluster.url, keys.tag)
        ledger = Ledger()
        for command_id, kind, ok, blob, extra in told[shard]:
            result = msgspec.msgpack.decode(blob, type=CommandResult) if ok else None
            ledger.sent.append(Sent(command_id, kind, "", 0.0, acked=ok, result=result,
                                    last_event_id=extra if ok else "",
                                    error="" if ok else extra))
        violations, counts = check_commands(Journal(read_journal(r, keys)), ledger, r, keys)
        violations += check_replay(r, keys)
        lost += counts.get("lost", 0)
        twice += counts.get("applied twice", 0)
        acked += counts.get("acknowledged", 0)
        bad += [v.render() for v in violations]
        r.close()
    _drop(rig, prefix, names)
    return {"promotion": promotion, "resume": resume, "lost": lost, "twice": twice,
            "acked": acked, "violations": bad}


def _drop(rig: Rig, prefix: str, shards: list[str]) -> None:
    """Delete a measurement's keys (each shard's on its primary) and its rq queues."""
    from tests.harness import cleanup

    queues = redis.Redis.from_url(rig.queue_url)
    for shard in shards:
        keys = _keys(prefix, shard)
        r = shard_redis(rig.cluster.url, keys.tag)
        try:
            batch = list(r.scan_iter(match=f"{prefix}:*", count=1000))
            for start in range(0, len(batch), 500):
                r.delete(*batch[start:start + 500])
        except redis.RedisError:
            pass
        cleanup(queues, keys)
        r.close()
    queues.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per point (medians)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a run")
    parser.add_argument("--clients", type=int, default=1, help="client processes per shard")
    parser.add_argument("--window", type=int, default=64, help="commands in flight per client")
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--failover-only", action="store_true", help="skip the scaling part")
    args = parser.parse_args()
    from tests.conftest import start_redis

    t0 = time.monotonic()
    cluster = LocalCluster.start()
    started = time.monotonic() - t0
    workdir = tempfile.mkdtemp(prefix="moor-bench-scale-")
    queue_server = start_redis(workdir, appendonly=False)
    rig = Rig(cluster, queue_server.url)
    try:
        version = cluster.nodes[0].info("server")["redis_version"]
        print(f"redis-server {version} cluster 3 primaries + 3 replicas (started in "
              f"{started:.1f}s), cpus={os.cpu_count()}, {args.clients} client process(es) per "
              f"shard x {args.window} in flight, {args.runs} runs of {args.seconds:g}s")
        rates: dict[tuple[int, int], float] = {}
        if not args.failover_only:
            print(f"{'shards':>6s} {'WAIT':>5s} {'commands/s':>11s} {'per shard':>10s} "
                  f"{'efficiency':>10s}  runs")
        for replicas in () if args.failover_only else (0, 1):
            for shards in (1, 2, 3):
                found = [measure(rig, shards, replicas, args.clients, args.window, args.seconds)
                         for _ in range(args.runs)]
                rate = rates[shards, replicas] = statistics.median(found)
                efficiency = rate / (shards * rates[1, replicas])
                print(f"{shards:6d} {'yes' if replicas else 'no':>5s} {rate:11,.0f} "
                      f"{rate / shards:10,.0f} {efficiency:10.2f}  "
                      + " ".join(f"{x:,.0f}" for x in found))
        for shards in () if args.failover_only else (2, 3):
            for replicas in (0, 1):
                added = (rates[shards, replicas] - rates[shards - 1, replicas]) \
                    / rates[1, replicas]
                print(f"shard {shards} {'with' if replicas else 'without'} WAIT adds "
                      f"{added:.2f} of one shard's rate")
        for shards in () if args.failover_only else (1, 2, 3):
            cost = 1 - rates[shards, 1] / rates[shards, 0]
            print(f"WAIT costs {cost:.0%} of the throughput with {shards} shard(s)")
        for replicas in () if args.failover_only else (0, 1):
            p50, p99 = round_trip(rig, replicas, args.round_trips)
            print(f"Client.submit round trip {'with' if replicas else 'without'} WAIT: "
                  f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")

        runs = [failover(rig, args.clients, before=2.0, after=3.0)
                for _ in range(args.failovers)]
        for k, run in enumerate(runs):
            print(f"failover {k + 1}: promoted in {run['promotion']:.2f}s, reducer resumed "
                  f"{run['resume']:.2f}s after the kill; {run['acked']} acknowledged, "
                  f"lost {run['lost']}, applied twice {run['twice']}")
            for line in run["violations"]:
                print("   ", line)
        print(f"failover median: promotion {statistics.median(r['promotion'] for r in runs):.2f}s"
              f", resume {statistics.median(r['resume'] for r in runs):.2f}s (goal < 5 s); "
              f"lost {sum(r['lost'] for r in runs)}, applied twice "
              f"{sum(r['twice'] for r in runs)} in {len(runs)} runs (goal 0)")
    finally:
        cluster.stop()
        queue_server.proc.terminate()
        queue_server.proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
