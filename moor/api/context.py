"""What every handler needs: Redis, the shard's keys, the data root, a control-plane client."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from commands.client import Client
from engine.core.state import World
from engine.keys import Keys
from projections.stream import load_live

__all__ = ["API_VERSION", "ENGINE_VERSION", "MIN_API_VERSION", "ApiContext", "CONTEXT",
           "ctx", "run"]

API_VERSION = "1.51"  # Docker Engine 28.3 to 28.5
MIN_API_VERSION = "1.24"
ENGINE_VERSION = "28.5.2"

T = TypeVar("T")


@dataclass
class ApiContext:
    """The server's connection to one engine shard."""

    redis: Any
    keys: Keys
    data_root: str
    timeout: float = 30.0

    def client(self, request: web.Request) -> Client:
        """Return a client whose commands record who asked (peer uid) and with what."""
        return Client(self.redis, self.keys, actor=_actor(request),
                      reason=request.headers.get("User-Agent", ""), timeout=self.timeout)

    def world(self) -> World:
        return load_live(self.redis, self.keys)[0]


CONTEXT = web.AppKey("moorage", ApiContext)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (Redis, files) in the loop's thread pool."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def _actor(request: web.Request) -> str:
    """Name the caller: `docker-api uid=N` on a unix socket, the peer address over TCP."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", raw)
            return f"docker-api uid={uid}"
        except OSError:
            return "docker-api"
    return f"docker-api {request.remote or ''}".strip()
