"""HTTP helpers shared by the handlers: JSON bodies, Docker's query parsing, thread streams.

Blocking Redis and file work runs in the loop's thread pool. A stream that follows the
events stream or a log runs its generator in a daemon thread and hands items to the handler
through a queue; when the handler ends (done, or the client went away and aiohttp
cancelled it) the thread is told to stop and does so within one blocking read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from aiohttp import web

from engine.errors import InvalidParameter, MoorError

__all__ = [
    "JSON",
    "NotImplementedHere",
    "api_version",
    "dumps",
    "json_body",
    "json_response",
    "query_bool",
    "query_int",
    "spooled_body",
    "thread_stream",
]

# The moby client decodes an error body only when Content-Type is exactly this.
JSON = "application/json"
_FALSE = frozenset({"", "0", "no", "false", "none"})
_END = object()


class NotImplementedHere(MoorError):
    """An Engine API feature moorage does not provide (Docker's NotImplemented, 501)."""

    status = 501


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def dumps(obj: Any) -> bytes:
    """Encode like Docker's JSON encoder: compact, one object per line."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def api_version(request: web.Request) -> tuple[int, ...]:
    """Return the request's API version (its `/v1.NN/` path), the newest (1.51) on a bare path."""
    text = request.match_info.get("version")
    return tuple(int(p) for p in text.split(".")) if text else (1, 51)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type=JSON)


async def json_body(request: web.Request) -> Any:
    """Read a JSON request body with dockerd's checks and texts."""
    ctype = request.headers.get("Content-Type", "")
    raw = await request.read()
    if raw.strip() and ctype.split(";")[0].strip() != JSON:
        raise InvalidParameter(
            f"unsupported Content-Type header ({ctype}): must be 'application/json'")
    if not raw.strip():
        raise InvalidParameter("invalid JSON: got EOF while reading request body")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise InvalidParameter(f"invalid JSON: {exc}") from None


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    """Docker's BoolValue: set and not one of "", 0, no, false, none."""
    if name not in request.query:
        return default
    return request.query[name].strip().lower() not in _FALSE


def query_int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name, "")
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidParameter(
            f'invalid value for {name}: strconv.Atoi: parsing "{value}": invalid syntax'
        ) from None


async def thread_stream(make: Callable[[threading.Event], Iterator[Any]],
                        limit: int = 512) -> AsyncIterator[Any]:
    """Run `make(stop)`'s iterator in a worker thread and yield its items here.

    At most `limit` items wait in between (back-pressure on the thread). Leaving the
    async iteration sets `stop`; the producer must check it between blocking reads.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()
    slots = threading.Semaphore(limit)

    def post(item: Any) -> bool:
        while not slots.acquire(timeout=0.5):
            if stop.is_set():
                return False
        loop.call_soon_threadsafe(queue.put_nowait, item)
        return True

    def produce() -> None:
        try:
            for item in make(stop):
                if stop.is_set() or not post(item):
                    return
        except BaseException as exc:  # handed to the handler, which maps it
            post(_Failed(exc))
            return
        post(_END)

    # A thread of its own (daemon): a follower may block for long, and must neither hold
    # a slot of the request pool nor keep the process alive at shutdown.
    threading.Thread(target=produce, name="moor-api-stream", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            slots.release()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()  # the thread sees it after its current blocking read


_SPOOL_CHUNK = 1 << 20


@contextlib.asynccontextmanager
async def spooled_body(request: web.Request, data_root: str, kind: str
                       ) -> AsyncIterator[str]:
    """Write the request body (a tar: load, import) to a file under the data root, not to
    memory; yield its path, and delete it afterwards."""
    spool = os.path.join(data_root, "tmp")
    await asyncio.to_thread(os.makedirs, spool, exist_ok=True)
    path = os.path.join(spool, f"{kind}-{uuid.uuid4().hex}.tar")
    try:
        with open(path, "wb") as f:
            async for chunk in request.content.iter_chunked(_SPOOL_CHUNK):
                await asyncio.to_thread(f.write, chunk)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
