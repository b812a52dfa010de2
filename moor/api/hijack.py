"""The hijacked connection exec start and container attach share (Docker's §11.3).

`hijack` answers `101 UPGRADED` (the client sent `Upgrade: tcp`) or `200` with the stream's
content type, and takes the connection's further bytes as stdin; `splice` then joins it to
a supervisor's unix socket: stdin out (with a TTY, the detach keys end the attachment and
leave the process running), the output back as the supervisor wrote it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from commands.options import detach_at, keys_tail
from engine.errors import Internal, InvalidParameter
from moor.api.http import api_version

__all__ = ["HalfCloseTolerant", "await_socket", "dimension", "hijack", "splice",
           "stream_content_type"]

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
_READY_WAIT = 10.0  # how long a supervisor's socket may take to appear


def stream_content_type(request: web.Request, tty: bool) -> str:
    """Raw with a TTY or before API 1.42; stdcopy-multiplexed otherwise."""
    if tty:
        return RAW
    return MULTIPLEXED if api_version(request) >= (1, 42) else RAW


class HalfCloseTolerant(asyncio.Protocol):
    """Delegate to aiohttp's protocol, but keep the transport open on the peer's EOF."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def eof_received(self) -> bool:
        return True

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _Hijacked(HalfCloseTolerant):
    """Take the connection's bytes as the process's stdin; keep writing after its EOF."""

    def __init__(self, inner: Any, stdin: asyncio.Queue[bytes | None]) -> None:
        super().__init__(inner)
        self._stdin = stdin

    def data_received(self, data: bytes) -> None:
        self._stdin.put_nowait(data)

    def eof_received(self) -> bool:
        self._stdin.put_nowait(None)
        return True  # half-close: the output still flows back

    def connection_lost(self, exc: Exception | None) -> None:
        self._stdin.put_nowait(None)
        super().connection_lost(exc)


async def hijack(request: web.Request, tty: bool
                 ) -> tuple[web.StreamResponse, asyncio.Queue[bytes | None]]:
    """Answer the upgrade and return the response and the queue of the client's bytes
    (None once its input has ended). The docker CLI half-closes at once when it sends no
    stdin; asyncio would then close the whole transport: the write side stays open here
    until the output ends."""
    upgrade = request.headers.get("Upgrade", "").lower() == "tcp"
    headers = {"Content-Type": stream_content_type(request, tty)}
    if upgrade:
        headers.update({"Connection": "Upgrade", "Upgrade": "tcp"})
    resp = web.StreamResponse(status=101 if upgrade else 200,
                              reason="UPGRADED" if upgrade else None, headers=headers)
    resp.force_close()
    stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
    if request.transport is not None and request.protocol is not None:
        request.transport.set_protocol(_Hijacked(request.protocol, stdin))
    await resp.prepare(request)
    return resp, stdin


async def splice(write: Callable[[bytes], Awaitable[Any]],
                 stdin: asyncio.Queue[bytes | None], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, keys: bytes) -> bool:
    """Relay until the supervisor ends the output; True if the client detached (keys)."""
    feeder = asyncio.create_task(_feed(stdin, writer, keys))
    read: asyncio.Task[bytes] | None = None
    try:
        while True:
            if read is None:
                read = asyncio.create_task(reader.read(65536))
            waiting: set[asyncio.Task[Any]] = {read} if feeder.done() else {read, feeder}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if feeder in done and not feeder.exception() and feeder.result():
                return True  # detached: the process keeps running
            if read in done:
                data, read = read.result(), None
                if not data:
                    return False
                await write(data)
    finally:
        for task in (read, feeder):
            if task is not None:
                task.cancel()
        writer.close()


async def _feed(stdin: asyncio.Queue[bytes | None], writer: asyncio.StreamWriter,
                keys: bytes) -> bool:
    """Copy the client's bytes to the supervisor; True when the client detached."""
    seen = b""
    while (data := await stdin.get()) is not None:
        at = detach_at(seen, data, keys)
        if at is not None:
            if at:
                writer.write(data[:at])
                await writer.drain()
            return True
        seen = keys_tail(seen, data, keys)
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    return False


async def await_socket(path: str, what: str = "exec session") -> None:
    """Wait for a supervisor's socket to appear (Docker's text when it does not)."""
    deadline = time.monotonic() + _READY_WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise Internal(f"timeout waiting for {what} ready")
        await asyncio.sleep(0.005)


def dimension(request: web.Request, key: str) -> int:
    """Parse a resize's `h` or `w` as Docker does (uint32)."""
    text = request.query.get(key, "0")
    if not text.isdigit() or int(text) >= 1 << 32:
        name = "height" if key == "h" else "width"
        raise InvalidParameter(f'invalid resize {name} "{text}": invalid syntax')
    return int(text)
