"""The distribution client's errors, rooted in the engine's tree (Docker's HTTP classes).

::

    InvalidParameter (400)
    ├── InvalidReference       a reference Docker's grammar refuses
    └── BadPlatform            a --platform that is not os/arch[/variant]
    NotFound (404)
    └── RegistryNotFound       manifest unknown, name unknown, pull access denied
    Unauthorized (401)         the registry refused the credentials (docker login)
    Internal (500)
    ├── RegistryError          any other registry answer (Docker's "Unknown" class)
    └── DigestMismatch         a blob or manifest whose bytes do not match its digest
"""

from __future__ import annotations

from engine.errors import Internal, InvalidParameter, MoorError, NotFound

__all__ = ["BadPlatform", "DigestMismatch", "InvalidReference", "RegistryError",
           "RegistryNotFound", "Unauthorized"]


class InvalidReference(InvalidParameter):
    """Signal a reference Docker's grammar refuses (the text starts `invalid reference`)."""


class BadPlatform(InvalidParameter):
    """Signal a platform string that is not os[/arch[/variant]]."""


class RegistryNotFound(NotFound):
    """Signal a manifest, repository or access the registry denies (Docker's 404s)."""


class Unauthorized(MoorError):
    """Signal credentials the registry refused (`docker login` answers 401)."""

    status = 401
    exit_code = 1


class RegistryError(Internal):
    """Signal any other registry failure (Docker answers 500, class Unknown)."""


class DigestMismatch(Internal):
    """Signal content whose sha256 is not the digest that named it."""
