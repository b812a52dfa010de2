"""The embedded Redis's one error class (and the private one for a server that exited)."""

from __future__ import annotations

__all__ = ["EmbeddedRedisError", "ServerExited"]


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found, started, reused or stopped."""


class ServerExited(EmbeddedRedisError):
    """The server we were waiting for exited."""
