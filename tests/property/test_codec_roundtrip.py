"""Round trips through CODEC: every envelope, command, record, result and host hand-off
decodes to itself.

`hypothesis.strategies.from_type` does not know msgspec Structs, so strategies are built
here from each Struct's field types (the handful of types our schema uses), which also
makes a new event or command tag covered without touching this file.
"""

from __future__ import annotations

import types
import typing
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from rq.serializers import JSONSerializer

from commands import schema as c
from commands.codec import CODEC, CommandResult
from events import model as e
from events import runs
from events.saga import StartPlan

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
TEXT = st.text(max_size=12)
SETTINGS = settings(max_examples=200, deadline=None)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """Return a strategy for one field type of our schema (raise on a type it lacks)."""
    if tp is int:
        return INT64
    if tp is str:
        return TEXT
    if tp is bool:
        return st.booleans()
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(strategy_for(a) for a in args))
    if tp is type(None):
        return st.none()
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return struct_strategy(tp)
    raise TypeError(f"no strategy for {tp!r}")


def struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Return a strategy building `cls` with every field drawn explicitly."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in msgspec.structs.fields(cls)}
    return st.builds(cls, **fields)


def union_strategy(union: Any) -> st.SearchStrategy[Any]:
    return st.one_of(*(struct_strategy(cls) for cls in typing.get_args(union)))


ENVELOPES = struct_strategy(c.Envelope)
COMMANDS = union_strategy(c.Command)
EVENTS = union_strategy(e.Event)
RECORDS = st.builds(e.EventRecord, meta=struct_strategy(e.EventMeta), event=EVENTS)
RESULTS = struct_strategy(CommandResult)
PLANS = struct_strategy(StartPlan)


@SETTINGS
@given(ENVELOPES)
def test_envelope_round_trip(env: c.Envelope) -> None:
    assert CODEC.envelope(CODEC.encode(env)) == env


@SETTINGS
@given(COMMANDS)
def test_command_round_trip(cmd: Any) -> None:
    data = CODEC.encode(cmd)
    assert CODEC.command(data) == cmd
    assert CODEC.encode(CODEC.command(data)) == data


@SETTINGS
@given(RECORDS)
def test_record_round_trip_msgpack(record: e.EventRecord) -> None:
    data = CODEC.encode(record)
    assert CODEC.record(data) == record
    assert CODEC.encode(CODEC.record(data)) == data


@SETTINGS
@given(RECORDS)
def test_record_round_trip_json(record: e.EventRecord) -> None:
    assert CODEC.record_json(CODEC.json(record)) == record
    assert CODEC.record_json(CODEC.json(record).decode()) == record


@SETTINGS
@given(RESULTS)
def test_result_round_trip(result: CommandResult) -> None:
    assert CODEC.result(CODEC.encode(result)) == result


@SETTINGS
@given(PLANS)
def test_start_plan_round_trip_through_rq(plan: StartPlan) -> None:
    # The engine hands the worker primitives, rq dumps and loads them as JSON.
    carried = JSONSerializer.loads(JSONSerializer.dumps({"plan": CODEC.primitives(plan)}))
    assert CODEC.plan(carried["plan"]) == plan


@SETTINGS
@given(union_strategy(runs.SpawnReply), struct_strategy(runs.ExitStatus),
       struct_strategy(runs.StopRequest))
def test_supervisor_files_and_replies_round_trip(reply: Any, status: runs.ExitStatus,
                                                 stop: runs.StopRequest) -> None:
    assert CODEC.spawn_reply(CODEC.json(reply)) == reply
    assert CODEC.exit_status(CODEC.json(status)) == status
    assert CODEC.stop_request(CODEC.json(stop)) == stop


@settings(max_examples=100, deadline=None)
@given(COMMANDS, RECORDS)
def test_commands_and_records_do_not_cross_decode(cmd: Any, record: e.EventRecord) -> None:
    # A command in the events stream (or the reverse) is quarantined, never misread.
    try:
        CODEC.record(CODEC.encode(cmd))
    except msgspec.ValidationError:
        pass
    else:
        raise AssertionError("a command decoded as an event record")
    try:
        CODEC.command(CODEC.encode(record))
    except msgspec.ValidationError:
        pass
    else:
        raise AssertionError("an event record decoded as a command")
