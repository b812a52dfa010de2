"""One msgpack codec for commands, events and results, built once at import."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from commands.schema import Command, Envelope
from events.model import EventRecord

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


CODEC = Codec()
