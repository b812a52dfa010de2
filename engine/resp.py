"""A minimal synchronous Redis connection for the short `moor` commands, without redis-py.

Why it exists: `import redis` (redis-py 8) costs ~65 ms on the reference VM, most of a
`moor ps` or `moor start` call, because the package's __init__ imports redis.asyncio
(asyncio, ssl, the cluster clients...). The short CLI commands send a handful of
commands on one connection, so they talk RESP2 themselves, with the `hiredis` C parser
(already a dependency of redis-py's fast path) over a plain socket.

`RespRedis` offers only what those paths call (`Client`'s send/submit/wait_result/
wait_event, `load_world`, `load_live`, `tail_id`, `read_records`), each returning what
redis-py returns with ``decode_responses=False``: xadd, blpop, hget, hgetall, xread,
xrange, xrevrange, ping, a MULTI/EXEC `pipeline` and close.

Limits: RESP2 only; ``redis://`` and ``unix://`` URLs (user/password → AUTH, a db →
SELECT); no TLS, no retries, no reconnect, no connection pool (one socket, opened on
first use). Anything else (``rediss://``, query options) is `Unsupported`: use redis-py.

Errors: `RespError` and its subclasses mirror redis-py's (`ConnectionError`,
`TimeoutError`, `ResponseError`). Callers catch `redis_errors()` / `connection_errors()`,
which add redis-py's classes when redis-py is loaded, so one except clause handles both
clients without importing redis-py.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis

__all__ = [
    "RespConnectionError",
    "RespError",
    "RespRedis",
    "RespResponseError",
    "RespTimeoutError",
    "Unsupported",
    "connection_errors",
    "redis_errors",
]

Arg = bytes | str | int | float


class RespError(Exception):
    """Base of this module's errors (redis-py: RedisError)."""


class RespConnectionError(RespError):
    """Cannot connect, or the connection broke (redis-py: ConnectionError)."""


class RespTimeoutError(RespError):
    """The socket timed out (redis-py: TimeoutError)."""


class RespResponseError(RespError):
    """The server answered with an error, e.g. WRONGTYPE (redis-py: ResponseError)."""


class Unsupported(ValueError):
    """The URL needs something this module does not do (TLS, options): use redis-py."""


def redis_errors() -> tuple[type[BaseException], ...]:
    """Every Redis error class in play: ours, plus redis-py's RedisError once it is loaded.

    A redis-py client can only raise after redis-py was imported, so looking it up in
    sys.modules (never importing it) is enough. Call it in the except clause itself.
    """
    loaded = sys.modules.get("redis")
    extra = getattr(loaded, "RedisError", None)
    return (RespError, extra) if isinstance(extra, type) else (RespError,)


def connection_errors() -> tuple[type[BaseException], ...]:
    """The connection and timeout error classes: ours, plus redis-py's once it is loaded."""
    found: list[type[BaseException]] = [RespConnectionError, RespTimeoutError]
    loaded = sys.modules.get("redis")
    for name in ("ConnectionError", "TimeoutError"):
        cls = getattr(loaded, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def _encode(value: Arg) -> bytes:
    """Encode one argument as redis-py does (str as UTF-8, numbers as their repr)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise RespError("Invalid input of type: 'bool'. Convert to a bytes, string, int or "
                        "float first.")
    if isinstance(value, int | float):
        return repr(value).encode()
    raise RespError(f"Invalid input of type: {type(value).__name__!r}")


def _pack(args: Sequence[Arg]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _pairs(reply: Any) -> dict[bytes, bytes]:
    if reply is None:
        return {}
    it = iter(reply)
    return dict(zip(it, it, strict=True))


def _entries(reply: Any) -> list[tuple[Any, Any]] | None:
    """A stream's entries as redis-py gives them: [(id, {field: value}), ...]."""
    if reply is None:
        return None
    return [(r[0], _pairs(r[1])) if r is not None else (None, None) for r in reply]


def _xread(reply: Any) -> list[list[Any]]:
    if reply is None:
        return []
    return [[r[0], _entries(r[1])] for r in reply]


def _blpop(reply: Any) -> tuple[bytes, bytes] | None:
    return tuple(reply) if reply else None  # type: ignore[return-value]


def parse_url(url: str) -> dict[str, Any]:
    """Split a redis:// or unix:// URL into how to connect; `Unsupported` otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "unix") or parts.query or parts.fragment:
        raise Unsupported(f"not a plain redis:// or unix:// URL: {parts.scheme}://...")
    found: dict[str, Any] = {
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "db": 0,
    }
    if parts.scheme == "unix":
        found["path"] = unquote(parts.path)
        return found
    found["host"] = unquote(parts.hostname or "localhost")
    found["port"] = parts.port or 6379
    path = parts.path.lstrip("/")
    if path:
        if not path.isdigit():
            raise Unsupported(f"not a database number: {path!r}")
        found["db"] = int(path)
    return found


class RespRedis:
    """One RESP2 connection with redis-py's method names and reply shapes (bytes)."""

    def __init__(self, *, host: str = "localhost", port: int = 6379, path: str | None = None,
                 db: int = 0, username: str | None = None, password: str | None = None,
                 socket_timeout: float | None = None) -> None:
        self._address: tuple[str, int] | str = path if path is not None else (host, port)
        self._db, self._username, self._password = db, username, password
        self._timeout = socket_timeout
        self._sock: socket.socket | None = None
        self._reader: Any = None

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RespRedis:
        return cls(**parse_url(url), **kwargs)

    # --- the wire ---------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        family = socket.AF_UNIX if isinstance(self._address, str) else socket.AF_INET
        try:
            if family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self._timeout)
                sock.connect(self._address)
            else:
                sock = socket.create_connection(self._address, timeout=self._timeout)  # type: ignore[arg-type]
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise RespConnectionError(f"Error connecting to {self._where()}: {exc}") from exc
        self._sock = sock
        self._reader = hiredis.Reader(replyError=RespResponseError)
        hello: list[Sequence[Arg]] = []
        if self._password is not None:
            hello.append(("AUTH", self._username, self._password) if self._username
                         else ("AUTH", self._password))
        if self._db:
            hello.append(("SELECT", self._db))
        if hello:
            try:
                replies = self._roundtrip(hello)
            except BaseException:
                self.close()
                raise
            for reply in replies:
                if isinstance(reply, RespResponseError):  # as redis-py: AuthenticationError
                    self.close()
                    raise RespConnectionError(str(reply))
        return sock

    def _where(self) -> str:
        address = self._address
        return address if isinstance(address, str) else f"{address[0]}:{address[1]}"

    def _read(self) -> Any:
        assert self._sock is not None
        while True:
            reply = self._reader.gets()
            if reply is not False:
                return reply
            try:
                data = self._sock.recv(65536)
            except TimeoutError as exc:
                self.close()
                raise RespTimeoutError("Timeout reading from socket") from exc
            except OSError as exc:
                self.close()
                raise RespConnectionError(f"Error while reading from {self._where()}: "
                                          f"{exc}") from exc
            if not data:
                self.close()
                raise RespConnectionError("Connection closed by server.")
            self._reader.feed(data)

    def _roundtrip(self, commands: Iterable[Sequence[Arg]]) -> list[Any]:
        """Send commands in one write; return their replies (error replies as values)."""
        packed = [_pack(cmd) for cmd in commands]
        sock = self._sock or self._connect()
        try:
            sock.sendall(b"".join(packed))
        except TimeoutError as exc:
            self.close()
            raise RespTimeoutError("Timeout writing to socket") from exc
        except OSError as exc:
            self.close()
            raise RespConnectionError(f"Error while writing to {self._where()}: {exc}") from exc
        try:
            return [self._read() for _ in packed]
        except hiredis.ProtocolError as exc:
            self.close()
            raise RespConnectionError(f"Protocol error: {exc}") from exc

    def execute_command(self, *args: Arg) -> Any:
        """Send one command; return its raw reply, raising an error reply."""
        (reply,) = self._roundtrip([args])
        if isinstance(reply, RespResponseError):
            raise reply
        return reply

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> RespRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the commands the CLI uses ----------------------------------------------------

    def ping(self) -> bool:
        return self.execute_command("PING") == b"PONG"

    def hget(self, name: Arg, key: Arg) -> bytes | None:
        return self.execute_command("HGET", name, key)  # type: ignore[no-any-return]

    def hgetall(self, name: Arg) -> dict[bytes, bytes]:
        return _pairs(self.execute_command("HGETALL", name))

    def blpop(self, keys: Sequence[Arg] | Arg, timeout: float | None = 0
              ) -> tuple[bytes, bytes] | None:
        names: list[Arg] = ([keys] if isinstance(keys, bytes | str | int | float)
                            else list(keys))
        return _blpop(self.execute_command("BLPOP", *names, timeout or 0))

    def xadd(self, name: Arg, fields: Mapping[Any, Arg], id: Arg = "*") -> bytes:  # noqa: A002
        if not fields:
            raise RespError("XADD fields must be a non-empty dict")
        args: list[Arg] = ["XADD", name, id]
        for field, value in fields.items():
            args += (field, value)
        return self.execute_command(*args)  # type: ignore[no-any-return]

    def xrange(self, name: Arg, min: Arg = "-", max: Arg = "+",  # noqa: A002
               count: int | None = None) -> list[tuple[Any, Any]] | None:
        args: list[Arg] = ["XRANGE", name, min, max]
        if count is not None:
            args += ("COUNT", count)
        return _entries(self.execute_command(*args))

    def xrevrange(self, name: Arg, max: Arg = "+", min: Arg = "-",  # noqa: A002
                  count: int | None = None) -> list[tuple[Any, Any]] | None:
        args: list[Arg] = ["XREVRANGE", name, max, min]
        if count is not None:
            args += ("COUNT", count)
        return _entries(self.execute_command(*args))

    def xread(self, streams: Mapping[Any, Arg], count: int | None = None,
              block: int | None = None) -> list[list[Any]]:
        args: list[Arg] = ["XREAD"]
        if count is not None:
            args += ("COUNT", count)
        if block is not None:
            args += ("BLOCK", block)
        args.append("STREAMS")
        args += list(streams.keys())
        args += list(streams.values())
        return _xread(self.execute_command(*args))

    def pipeline(self, transaction: bool = True) -> RespPipeline:
        return RespPipeline(self, transaction)


class RespPipeline:
    """Queued commands sent in one write (inside MULTI/EXEC with `transaction`)."""

    def __init__(self, redis: RespRedis, transaction: bool) -> None:
        self._redis, self._transaction = redis, transaction
        self._queued: list[tuple[Sequence[Arg], Any]] = []

    def __enter__(self) -> RespPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self._queued.clear()

    def hgetall(self, name: Arg) -> RespPipeline:
        self._queued.append((("HGETALL", name), _pairs))
        return self

    def hget(self, name: Arg, key: Arg) -> RespPipeline:
        self._queued.append((("HGET", name, key), None))
        return self

    def execute(self) -> list[Any]:
        """Return every command's reply; raise the first error reply (as redis-py does)."""
        queued, self._queued = self._queued, []
        if not queued:
            return []
        commands = [cmd for cmd, _ in queued]
        if self._transaction:
            replies = self._redis._roundtrip([("MULTI",), *commands, ("EXEC",)])
            for reply in replies[:-1]:  # a queueing error (EXECABORT follows)
                if isinstance(reply, RespResponseError):
                    raise reply
            if isinstance(replies[-1], RespResponseError):
                raise replies[-1]
            if replies[-1] is None:
                raise RespError("Watched variable changed.")
            results = list(replies[-1])
        else:
            results = self._redis._roundtrip(commands)
        for result in results:
            if isinstance(result, RespResponseError):
                raise result
        return [parse(r) if parse else r for (_, parse), r in zip(queued, results, strict=True)]
