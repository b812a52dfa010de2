"""What every handler needs: Redis, the shard's keys, the data root, a control-plane client."""

from __future__ import annotations

import asyncio
import functools
import pwd
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
    """Name the caller: on a unix socket, its kernel-given credentials and user name
    (`docker-api uid=1000 pid=4242 user=alice`); over TCP, the peer address.

    The principal the engine records is the API's own (the control principal): anyone who
    may open the socket acts through it, as with dockerd. The peer's credentials say who.
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", raw)
        except OSError:
            return "docker-api"
        return f"docker-api uid={uid} pid={pid} user={_user_name(uid)}"
    return f"docker-api {request.remote or ''}".strip()


@functools.lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    """Return the login name of a uid, or "?" when it has none (a container's uid)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"
