"""The invariants, each judged against a source the engine does not control.

- commands: the client's ledger (what each submit was told) against the journal read
  back from Redis — an acknowledged command has exactly the events its result listed,
  in one decision (lists, so a repeat shows); every command in the commands stream is
  decided (nothing stranded) and nothing is quarantined;
- replay: the journal folded with `engine.core.evolve` against the snapshot in Redis,
  read in one transaction;
- host (in `hoststate`): each container's state against /proc, cgroups, /run/netns and
  the mounts; a mismatch that lasts is a stuck container;
- effects: per (container, generation) each fact at most once in the journal, and every
  process the kernel exec'd as a container init matched to one ContainerStarted;
- removal: every `rm -f` destroyed within 5 s (less the time a fault impaired the engine);
- leaks: after everything is removed, nothing of any container on the host.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from typing import Any, cast

import msgspec

from commands.codec import CODEC
from engine.core.evolve import evolve
from engine.core.state import World
from engine.snapshot import world_from_parts
from events import model as e
from tests.chaos import hostprobe
from tests.chaos.journal import Journal, Violation, newer
from tests.chaos.observer import Spawn
from tests.chaos.workload import Ledger, Removal

__all__ = [
    "check_commands",
    "check_effects",
    "check_leaks",
    "check_removals",
    "check_replay",
]

RM_F_LIMIT = 5.0


# --- commands ---------------------------------------------------------------------------

def _runs(positions: list[int]) -> int:
    """Count the separate decisions: maximal runs of consecutive journal positions."""
    return sum(1 for i, p in enumerate(positions) if i == 0 or p != positions[i - 1] + 1)


def check_commands(journal: Journal, ledger: Ledger, redis: Any, keys: Any
                   ) -> tuple[list[Violation], dict[str, int]]:
    """Judge every command against the journal; return violations and the counts."""
    found: list[Violation] = []
    counts: Counter[str] = Counter()
    tags = [type(r.event).__name__ for _, r in journal.entries]
    mine = set()
    with ledger.lock:
        sent = list(ledger.sent)
    for s in sent:
        mine.add(s.command_id)
        positions = journal.by_command.get(s.command_id, [])
        got = [tags[p] for p in positions]
        cid = s.result.container_id if s.result is not None else ""
        cid = cid or (journal.entries[positions[0]][1].meta.container_id if positions else "")
        excerpt = journal.excerpt(cid, 10) if cid else ""
        if s.acked:
            counts["acknowledged"] += 1
            assert s.result is not None
            expected = list(s.result.events)
            if not positions:
                counts["lost"] += 1
                found.append(Violation("lost", cid, f"{s.kind} {s.target[:24]} (command "
                                       f"{s.command_id}) was acknowledged with {expected} but "
                                       "the journal has no event of it", excerpt))
            elif _runs(positions) > 1 or len(got) > len(expected):
                counts["applied twice"] += 1
                found.append(Violation("applied-twice", cid, f"{s.kind} (command "
                                       f"{s.command_id}) acknowledged with {expected}; the "
                                       f"journal has {got} in {_runs(positions)} decisions",
                                       excerpt))
            elif got != expected or journal.entries[positions[-1]][0] != s.last_event_id:
                found.append(Violation("acknowledged-mismatch", cid, f"{s.kind} (command "
                                       f"{s.command_id}) acknowledged with {expected} ending at "
                                       f"{s.last_event_id}; the journal has {got} ending at "
                                       f"{journal.entries[positions[-1]][0]}", excerpt))
        else:
            counts["unacknowledged"] += 1
            if positions:
                counts["unacknowledged, applied"] += 1
            if _runs(positions) > 1:
                counts["applied twice"] += 1
                found.append(Violation("applied-twice", cid, f"{s.kind} (command "
                                       f"{s.command_id}, unacknowledged: {s.error}) has {got} in "
                                       f"{_runs(positions)} decisions", excerpt))
    # Reports and timers the engine sent itself: one decision each, too.
    for command_id, positions in journal.by_command.items():
        if command_id not in mine and _runs(positions) > 1:
            counts["applied twice"] += 1
            cid = journal.entries[positions[0]][1].meta.container_id
            found.append(Violation("applied-twice", cid, f"report {command_id} decided in "
                                   f"{_runs(positions)} separate decisions: "
                                   f"{[tags[p] for p in positions]}", journal.excerpt(cid, 10)))
    found += _stranded(journal, redis, keys, counts)
    return found, dict(counts)


def _stranded(journal: Journal, redis: Any, keys: Any, counts: Counter[str]) -> list[Violation]:
    """Every entry of the inbox streams (commands, reports, the reducer's own) must have
    been decided (or quarantined).

    Entries appended in the last few seconds (a reconcile's drift report) may still be on
    their way to the reducer: only older ones count.
    """
    found = []
    done = {k.decode() for k in redis.hkeys(keys.done)}
    seconds, micros = redis.time()
    before = f"{seconds * 1000 + micros // 1000 - 5000}-0"
    entries = [entry for stream in (keys.commands, keys.reports, keys.internal)
               for entry in redis.xrange(stream, max=before)]
    for entry_id, fields in entries:
        try:
            env = CODEC.envelope(fields[b"env"])
            cmd = CODEC.command(fields[b"cmd"])
        except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
            continue  # the quarantine check below covers it
        if env.command_id not in journal.by_command and env.command_id not in done:
            counts["stranded"] += 1
            found.append(Violation("stranded", env.container_id,
                                   f"{type(cmd).__name__} (command {env.command_id}, entry "
                                   f"{entry_id.decode()}) was never decided",
                                   journal.excerpt(env.container_id, 8)
                                   if env.container_id else ""))
    for entry_id, fields in redis.xrange(keys.quarantine):
        reason = fields.get(b"reason", b"?").decode(errors="replace")
        found.append(Violation("quarantined", "", f"entry {entry_id.decode()}: {reason}"))
    return found


# --- replay ---------------------------------------------------------------------------------

def check_replay(redis: Any, keys: Any) -> list[Violation]:
    """Fold the journal read back from Redis and compare it with the snapshot.

    The snapshot and the events are read in one MULTI, so neither moves under the other;
    the fold stops at the snapshot's checkpoint, which must be the journal's last id.
    """
    pipe = redis.pipeline(transaction=True)
    pipe.hgetall(keys.containers)
    pipe.hgetall(keys.versions)
    pipe.hgetall(keys.world)
    pipe.xrange(keys.events)
    containers, versions, parts, raw = pipe.execute()
    live = world_from_parts(containers, versions, parts)
    checkpoint = parts.get(b"checkpoint", b"0-0").decode()
    folded = World()
    folded_versions: dict[str, int] = {}
    last = "0-0"
    for entry_id, fields in raw:
        if newer(entry_id.decode(), checkpoint):
            break
        record = CODEC.record(fields[b"d"])
        evolve(folded, record)
        if record.meta.container_id and record.meta.version:
            folded_versions[record.meta.container_id] = record.meta.version
        last = entry_id.decode()
    found = []
    tail = raw[-1][0].decode() if raw else "0-0"
    if checkpoint != tail or last != checkpoint:
        found.append(Violation("replay", "", f"snapshot checkpoint {checkpoint}, journal ends "
                               f"at {tail}, fold reached {last}"))
    a, b = folded.snapshot(), live.snapshot()
    for part in sorted(set(a) | set(b)):
        if part == "containers":
            continue
        if a.get(part) != b.get(part):
            found.append(Violation("replay", "", f"{part}: replay {_short(a.get(part))} != "
                                   f"snapshot {_short(b.get(part))}"))
    ca = cast(dict[str, Any], a.get("containers") or {})
    cb = cast(dict[str, Any], b.get("containers") or {})
    for cid in sorted(set(ca) | set(cb)):
        if ca.get(cid) != cb.get(cid):
            diff = _diff(ca.get(cid), cb.get(cid))
            found.append(Violation("replay", cid, f"replay and snapshot differ: {diff}"))
    stored = {k.decode(): int(v) for k, v in versions.items()}
    if stored != folded_versions:
        bad = sorted(k for k in set(stored) | set(folded_versions)
                     if stored.get(k) != folded_versions.get(k))
        found.append(Violation("replay", "", f"versions differ for {len(bad)} containers: " +
                               ", ".join(f"{k[:12]} replay {folded_versions.get(k)} snapshot "
                                         f"{stored.get(k)}" for k in bad[:5])))
    return found


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 200 else text[:200] + "…"


def _diff(a: Any, b: Any) -> str:
    if a is None or b is None:
        return f"replay {'has' if a is not None else 'lacks'} it, snapshot " \
               f"{'has' if b is not None else 'lacks'} it"
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k}: replay {_short(a.get(k))} snapshot {_short(b.get(k))}"
                     for k in keys)


# --- side effects per generation ------------------------------------------------------------

def check_effects(journal: Journal, spawns: list[Spawn],
                  killed_runs: list[tuple[str, int]]) -> list[Violation]:
    """Each fact at most once per (container, generation); each spawn has its start."""
    found = []
    per_gen: Counter[tuple[str, int, str]] = Counter()
    per_cid: Counter[tuple[str, str]] = Counter()
    died: set[tuple[str, int]] = set()
    for _, record in journal.entries:
        ev, cid = record.event, record.meta.container_id
        if isinstance(ev, e.StartInitiated | e.ContainerStarted | e.ContainerDied
                      | e.StartFailed | e.ContainerRestarted):
            per_gen[(cid, ev.generation, type(ev).__name__)] += 1
        if isinstance(ev, e.ContainerCreated | e.ContainerDestroyed | e.ContainerMarkedDead):
            per_cid[(cid, type(ev).__name__)] += 1
        if isinstance(ev, e.ContainerDied):
            died.add((cid, ev.generation))
    for (cid, gen, tag), n in sorted(per_gen.items()):
        if n > 1:
            found.append(Violation("duplicate-effect", cid, f"{tag} recorded {n} times for "
                                   f"generation {gen}", journal.excerpt(cid, 12)))
    for (cid, tag), n in sorted(per_cid.items()):
        if n > 1:
            found.append(Violation("duplicate-effect", cid, f"{tag} recorded {n} times",
                                   journal.excerpt(cid, 12)))
    for cid, gen in sorted({(cid, gen) for cid, gen, _ in per_gen}):
        if per_gen[(cid, gen, "ContainerStarted")] and per_gen[(cid, gen, "StartFailed")]:
            found.append(Violation("duplicate-effect", cid, f"generation {gen} both started "
                                   "and failed to start", journal.excerpt(cid, 12)))
    found += _match_spawns(journal, spawns)
    for cid, gen in killed_runs:
        if (cid, gen) not in died:
            found.append(Violation("lost-exit", cid, f"its supervisor was killed while "
                                   f"generation {gen} ran; no ContainerDied for it",
                                   journal.excerpt(cid, 12)))
    return found


def _stream_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _match_spawns(journal: Journal, spawns: list[Spawn]) -> list[Violation]:
    """Give every container init the kernel exec'd its generation; at most one each.

    A spawn belongs to the last start attempt (StartInitiated) recorded before it was
    exec'd: stream ids carry Redis's clock, the spawn the kernel's, on the same host. A
    generation with two spawns ran its process twice; a spawn whose generation recorded a
    different pid as started is a process the journal does not know.
    """
    found = []
    observed: dict[str, list[Spawn]] = defaultdict(list)
    for spawn in spawns:
        observed[spawn.cid].append(spawn)
    for cid, seen in sorted(observed.items()):
        attempts: list[tuple[int, int]] = []  # (ms, generation)
        started: dict[int, int] = {}  # generation -> pid (0: the exit overtook the report)
        for entry_id, record in journal.by_container.get(cid, []):
            ev = record.event
            if isinstance(ev, e.StartInitiated):
                attempts.append((_stream_ms(entry_id), ev.generation))
            elif isinstance(ev, e.ContainerStarted):
                started[ev.generation] = ev.pid
        by_gen: dict[int, list[Spawn]] = defaultdict(list)
        for spawn in sorted(seen, key=lambda s: s.exec_ms):
            gens = [g for ms, g in attempts if ms <= spawn.exec_ms]
            if not gens:
                found.append(Violation("duplicate-effect", cid, f"the kernel exec'd container "
                                       f"init pid {spawn.pid} before any start attempt was "
                                       "recorded", journal.excerpt(cid, 12)))
                continue
            by_gen[gens[-1]].append(spawn)
        for gen, runs in sorted(by_gen.items()):
            pids = [s.pid for s in runs]
            if len(runs) > 1:
                found.append(Violation("duplicate-effect", cid, f"generation {gen} was "
                                       f"spawned {len(runs)} times (container init pids {pids})",
                                       journal.excerpt(cid, 12)))
            elif started.get(gen) and started[gen] != pids[0]:
                found.append(Violation("duplicate-effect", cid, f"generation {gen}: the kernel "
                                       f"exec'd pid {pids[0]}, the journal recorded pid "
                                       f"{started[gen]} as started", journal.excerpt(cid, 12)))
    return found


# --- removal and leaks --------------------------------------------------------------------------

def check_removals(removals: list[Removal], windows: list[tuple[float, float]],
                   grace: float) -> list[Violation]:
    """Every rm -f destroyed within 5 s, not counting time a fault impaired the engine."""
    found = []
    for r in removals:
        impaired = sum(max(0.0, min(r.ended, b + grace) - max(r.started, a))
                       for a, b in windows)
        took = r.ended - r.started
        if r.outcome in ("destroyed", "not found"):
            if took - impaired > RM_F_LIMIT:
                found.append(Violation("rm-f-5s", r.cid, f"rm -f took {took:.1f}s "
                                       f"({impaired:.1f}s of it under a fault)"))
        elif impaired == 0:
            found.append(Violation("rm-f-5s", r.cid, f"rm -f did not complete ({r.outcome}) "
                                   f"after {took:.1f}s, with no fault under way"))
    return found


def check_leaks(engine: Any, cids: list[str], spawns: list[Spawn],
                timeout: float = 10) -> list[Violation]:
    """After everything was removed: nothing of any container may remain on the host."""
    pids: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for spawn in spawns:
        pids[spawn.cid].append((spawn.pid, spawn.ticks))
    deadline = time.monotonic() + timeout
    left: dict[str, list[str]] = {}
    for cid in dict.fromkeys(cids):
        while True:
            found = hostprobe.leaks_of(cid, parent=engine.cgroup_parent,
                                       data_root=engine.data_root, pids=pids[cid])
            if not found or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # processes and veths take a moment to go
        if found:
            left[cid] = found
    return [Violation("leak", cid, resource) for cid, found in left.items() for resource in found]
