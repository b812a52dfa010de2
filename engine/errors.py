"""One exception tree for moorage, with Docker's error classes.

    MoorError                      status  exit
    ├── InvalidParameter           400     1
    ├── Forbidden                  403     1   (refused by the admission policy)
    ├── NotFound                   404     1
    ├── Conflict                   409     1
    ├── NotModified                304     0   (nothing to do: not a failure)
    ├── Unavailable                503     1
    │   └── Timeout                503     1   (no result within the wait)
    └── Internal                   500     1
        └── FencedOut              500     1   (a deposed reducer tried to write)

Each carries its HTTP status (the Docker API maps it 1:1) and the CLI exit code.
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "FencedOut",
    "Forbidden",
    "Internal",
    "InvalidParameter",
    "MoorError",
    "NotFound",
    "NotModified",
    "Timeout",
    "Unavailable",
    "error_for_status",
]


class MoorError(Exception):
    """Root of every moorage error; `message` is Docker's text."""

    status = 500
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameter(MoorError):
    status = 400


class Forbidden(MoorError):
    status = 403


class NotFound(MoorError):
    status = 404


class Conflict(MoorError):
    status = 409


class NotModified(MoorError):
    status = 304
    exit_code = 0


class Unavailable(MoorError):
    status = 503


class Timeout(Unavailable):
    pass


class Internal(MoorError):
    status = 500


class FencedOut(Internal):
    pass


_BY_STATUS: dict[int, type[MoorError]] = {
    400: InvalidParameter, 403: Forbidden, 404: NotFound, 409: Conflict, 304: NotModified,
    503: Unavailable, 500: Internal,
}


def error_for_status(status: int, message: str) -> MoorError:
    """Rebuild the typed error a rejection recorded (e.g. from a CommandResult)."""
    return _BY_STATUS.get(status, Internal)(message)
