"""One msgpack codec for commands, events and results, built once at import."""

from __future__ import annotations

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
    """Encoders and decoders for every wire type; one instance per process."""

    def __init__(self) -> None:
        self._enc = msgspec.msgpack.Encoder()
        self._envelope = msgspec.msgpack.Decoder(Envelope)
        self._command = msgspec.msgpack.Decoder(Command)
        self._record = msgspec.msgpack.Decoder(EventRecord)
        self._result = msgspec.msgpack.Decoder(CommandResult)
        self._json_record = msgspec.json.Decoder(EventRecord)
        self._json_enc = msgspec.json.Encoder()

    def encode(self, obj: Any) -> bytes:
        return self._enc.encode(obj)

    def envelope(self, data: bytes) -> Envelope:
        return self._envelope.decode(data)

    def command(self, data: bytes) -> Command:
        return self._command.decode(data)

    def record(self, data: bytes) -> EventRecord:
        return self._record.decode(data)

    def result(self, data: bytes) -> CommandResult:
        return self._result.decode(data)

    def record_json(self, data: bytes | str) -> EventRecord:
        return self._json_record.decode(data)

    def json(self, obj: Any) -> bytes:
        return self._json_enc.encode(obj)


CODEC = Codec()
