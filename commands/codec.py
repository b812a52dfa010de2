"""The one codec: every wire type, built once at import.

msgpack for the streams (commands, events, results); JSON for the journal's export and
for the host hand-offs: the start plan (an rq job's argument, rq serializes JSON), the
supervisor's spawn reply, its `exit.json` and the `stop.json` it reads.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from commands.schema import Command, Envelope
from events.model import EventRecord
from events.runs import ExitStatus, SpawnReply, StopRequest
from events.saga import StartPlan

__all__ = ["CODEC", "Codec", "CommandResult", "DecodeError"]

DecodeError = (msgspec.DecodeError, msgspec.ValidationError)


class CommandResult(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What the waiting client learns: accepted (with the events' tags) or rejected."""

    command_id: str
    ok: bool
    status: int = 200
    message: str = ""
    container_id: str = ""
    version: int = 0
    events: tuple[str, ...] = ()


class Codec:
    """Encoders and decoders for every wire type; one instance per process.

    Each operation is the msgspec method itself, bound once here: the reducer calls them
    several times per command, and a wrapping Python function would double their cost.
    """

    def __init__(self) -> None:
        enc = msgspec.msgpack.Encoder()
        json_enc = msgspec.json.Encoder()
        self.encode: Callable[[Any], bytes] = enc.encode
        self.envelope: Callable[[bytes], Envelope] = msgspec.msgpack.Decoder(Envelope).decode
        self.command: Callable[[bytes], Command] = msgspec.msgpack.Decoder(Command).decode
        self.record: Callable[[bytes], EventRecord] = msgspec.msgpack.Decoder(
            EventRecord).decode
        self.result: Callable[[bytes], CommandResult] = msgspec.msgpack.Decoder(
            CommandResult).decode
        self.record_json: Callable[[bytes | str], EventRecord] = msgspec.json.Decoder(
            EventRecord).decode
        self.json: Callable[[Any], bytes] = json_enc.encode
        # The start plan rides in an rq job's kwargs, which rq's JSONSerializer dumps and
        # loads: the engine hands it over as primitives, the worker types it back once.
        self.primitives: Callable[[Any], Any] = msgspec.to_builtins
        self.plan: Callable[[Any], StartPlan] = partial(msgspec.convert, type=StartPlan)
        self.spawn_reply: Callable[[bytes], SpawnReply] = msgspec.json.Decoder(
            SpawnReply).decode
        self.exit_status: Callable[[bytes], ExitStatus] = msgspec.json.Decoder(
            ExitStatus).decode
        self.stop_request: Callable[[bytes], StopRequest] = msgspec.json.Decoder(
            StopRequest).decode

    def entry(self, env: Envelope, cmd: Command) -> dict[str, bytes]:
        """Return a command's commands-stream entry: the envelope apart from the payload."""
        return {"env": self.encode(env), "cmd": self.encode(cmd)}


CODEC = Codec()
