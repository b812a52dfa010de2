"""Quarantine: entries that cannot be decoded or validated are set aside; the fold goes on.

1,000 garbage entries of every kind the commands stream can receive from a buggy or
hostile writer are mixed at random positions between ~300 valid commands. Each garbage
entry must land in the quarantine stream with a reason naming the field and the problem,
and the valid commands must fold exactly as if the garbage had never been there.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec

from engine.keys import GROUP
from engine.reducer import Reducer
from engine.snapshot import load_world
from tests.harness import all_records
from tests.integration.workload import (
    BASE_NS,
    builtins,
    fields_of,
    generate,
    pure_fold,
    state_of,
    xadd_all,
)

_enc = msgspec.msgpack.encode
_ENV = {"command_id": "garbage", "issued_at": BASE_NS, "actor": "fuzz"}
_CMD = {"type": "StartContainer", "ref": "web"}

# kind -> (fields maker, what the reason must say)
Maker = Callable[[random.Random], dict[str, Any]]
KINDS: dict[str, tuple[Maker, str]] = {
    "random bytes in both fields": (
        lambda g: {"env": g.randbytes(g.randint(0, 40)), "cmd": g.randbytes(g.randint(0, 40))},
        r"^env: \S"),
    "random bytes in cmd": (
        lambda g: {"env": _enc(_ENV), "cmd": g.randbytes(g.randint(0, 40))}, r"^cmd: \S"),
    "missing env": (lambda g: {"cmd": _enc(_CMD)}, r"^missing field 'env'$"),
    "missing cmd": (lambda g: {"env": _enc(_ENV)}, r"^missing field 'cmd'$"),
    "no known field": (lambda g: {"junk": g.randbytes(8)}, r"^missing field 'env'$"),
    "unknown command tag": (
        lambda g: {"env": _enc(_ENV), "cmd": _enc({"type": "LaunchRocket", "ref": "x"})},
        r"^cmd: Invalid value 'LaunchRocket' - at `\$\.type`$"),
    "wrong type in cmd": (
        lambda g: {"env": _enc(_ENV), "cmd": _enc({"type": "StartContainer", "ref": 42})},
        r"^cmd: Expected `str`, got `int` - at `\$\.ref`$"),
    "wrong type in env": (
        lambda g: {"env": _enc({**_ENV, "issued_at": "yesterday"}), "cmd": _enc(_CMD)},
        r"^env: Expected `int`, got `str` - at `\$\.issued_at`$"),
    "missing required field": (
        lambda g: {"env": _enc(_ENV), "cmd": _enc({"type": "StopContainer"})},
        r"^cmd: Object missing required field `ref`$"),
    "empty command_id": (
        lambda g: {"env": _enc({**_ENV, "command_id": ""}), "cmd": _enc(_CMD)},
        r"^envelope: empty command_id$"),
    "issued_at not positive": (
        lambda g: {"env": _enc({**_ENV, "issued_at": -g.randint(0, 9)}), "cmd": _enc(_CMD)},
        r"^envelope: issued_at must be"),
    "unknown envelope field": (
        lambda g: {"env": _enc({**_ENV, "priority": 9}), "cmd": _enc(_CMD)},
        r"^env: Object contains unknown field `priority`$"),
    "array instead of map": (
        lambda g: {"env": _enc([1, 2, 3]), "cmd": _enc(_CMD)},
        r"^env: Expected `object`, got `array`$"),
    "scalar instead of map": (
        lambda g: {"env": _enc(_ENV), "cmd": _enc(g.choice(("StartContainer", 7, None)))},
        r"^cmd: Expected `object`, got `(str|int|null|None)`$"),
    "fields swapped": (
        lambda g: {"env": _enc(_CMD), "cmd": _enc(_ENV)},
        r"^env: Object contains unknown field `(type|ref)`$"),
}


def _garbage(rng: random.Random, n: int) -> list[tuple[str, dict[str, Any]]]:
    names = sorted(KINDS)
    out = [(kind, KINDS[kind][0](rng)) for kind in names]  # every kind at least once
    while len(out) < n:
        kind = rng.choice(names)
        out.append((kind, KINDS[kind][0](rng)))
    rng.shuffle(out)
    return out


def test_garbage_is_quarantined_and_valid_commands_still_fold(backend):
    r, keys = backend
    rng = random.Random(20240611)
    valid = generate(300, tag="q", seed=11)
    garbage = _garbage(rng, 1000)
    # Interleave: garbage at random positions, valid commands in their order.
    slots = sorted(rng.sample(range(len(valid) + len(garbage)), len(garbage)))
    entries: list[dict[str, Any]] = []
    kinds: list[str | None] = []
    g, v = iter(garbage), iter(valid)
    wanted = set(slots)
    for pos in range(len(valid) + len(garbage)):
        if pos in wanted:
            kind, fields = next(g)
            entries.append(fields)
            kinds.append(kind)
        else:
            entries.append(fields_of(next(v)))
            kinds.append(None)
    ids = xadd_all(r, keys, entries)
    kind_of = {i: k for i, k in zip(ids, kinds, strict=True) if k is not None}

    reducer = Reducer(r, keys, batch=128, block_ms=10)
    assert reducer.try_acquire()
    while reducer.step():
        pass

    # Every garbage entry is quarantined once, with a reason naming field and problem.
    quarantined = r.xrange(keys.quarantine)
    assert len(quarantined) == 1000
    seen: Counter[str] = Counter()
    for _, fields in quarantined:
        entry = fields[b"entry"]
        kind = kind_of[entry]
        reason = fields[b"reason"].decode()
        assert reason and re.search(KINDS[kind][1], reason), (kind, reason)
        raw = msgspec.msgpack.decode(fields[b"raw"])
        original = entries[ids.index(entry)]
        assert {bytes(k): bytes(val) for k, val in raw} == {
            k.encode(): val if isinstance(val, bytes) else val.encode()
            for k, val in original.items()}
        seen[entry.decode()] += 1
    assert set(seen) == {i.decode() for i in kind_of} and max(seen.values()) == 1
    assert set(Counter(kind_of.values())) == set(KINDS)

    # The valid commands folded as if the garbage had never been written.
    world, records, results = pure_fold(valid)
    assert state_of(reducer.world) == state_of(world)
    assert state_of(load_world(r, keys)[0]) == state_of(world)
    assert [builtins(rec) for _, rec in all_records(r, keys)] == [builtins(x) for x in records]
    done = {k.decode() for k in r.hkeys(keys.done)}
    assert done == set(results)  # every valid command id, and nothing of the garbage
    assert {env.command_id for env, _ in valid} == done
    for stream in (keys.commands, keys.reports):  # every entry read and acknowledged
        assert r.xpending(stream, GROUP)["pending"] == 0
        group = r.xinfo_groups(stream)[0]
        assert group["last-delivered-id"] == r.xrevrange(stream, count=1)[0][0]
    assert r.llen(keys.outbox) == 0
    reducer.release()


def test_quarantine_reason_survives_a_valid_entry_in_the_same_batch(backend):
    """A bad entry between two good ones of the same batch does not stall either."""
    r, keys = backend
    good = generate(3, tag="qq", seed=1)
    entries = [fields_of(good[0]), {"env": b"\xc1", "cmd": b"\xc1"}, fields_of(good[1]),
               {"env": _enc({**_ENV, "command_id": ""}), "cmd": _enc(_CMD)},
               fields_of(good[2]), fields_of(good[2])]
    xadd_all(r, keys, entries)
    reducer = Reducer(r, keys, block_ms=10)
    assert reducer.try_acquire()
    assert reducer.step() == len(entries)
    reasons = [f[b"reason"].decode() for _, f in r.xrange(keys.quarantine)]
    assert reasons == ["env: MessagePack data is malformed: invalid opcode '\\xc1' (byte 0)",
                       "envelope: empty command_id"]
    assert r.hlen(keys.done) == 3
    assert r.xpending(keys.commands, GROUP)["pending"] == 0
    reducer.release()
