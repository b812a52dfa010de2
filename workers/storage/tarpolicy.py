"""Name the bounds and path rules of layer extraction, and the errors that refuse an archive.

The policy itself is written out in :mod:`workers.storage.tarsafe`; this module holds the
pieces of it that the extraction modules share.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from engine.errors import InvalidParameter

__all__ = [
    "KEPT_XATTRS",
    "KEPT_XATTR_PREFIXES",
    "OPAQUE",
    "WH",
    "ArchiveError",
    "Limits",
    "UnsafeArchive",
    "check_symlink_target",
    "components",
]

WH = ".wh."  # an overlay whiteout entry's prefix
OPAQUE = ".wh..wh..opq"  # marks its directory opaque
KEPT_XATTR_PREFIXES = ("user.",)
KEPT_XATTRS = ("security.capability",)


class ArchiveError(InvalidParameter):
    """Signal a layer archive that cannot be read (corrupt, truncated, unsupported)."""


class UnsafeArchive(ArchiveError):
    """Signal an archive entry that the extraction policy refuses."""


@dataclass(frozen=True)
class Limits:
    """Bound what one layer may hold: declared content bytes and number of entries."""

    max_bytes: int = 8 << 30
    max_entries: int = 1_000_000

    @classmethod
    def from_env(cls) -> Limits:
        """Read limits from ``MOOR_LAYER_MAX_BYTES`` and ``MOOR_LAYER_MAX_ENTRIES``."""
        default = cls()
        return cls(
            max_bytes=int(os.environ.get("MOOR_LAYER_MAX_BYTES", default.max_bytes)),
            max_entries=int(os.environ.get("MOOR_LAYER_MAX_ENTRIES", default.max_entries)),
        )


def components(name: str, what: str = "entry") -> tuple[str, ...]:
    """Split an archive name into safe path components or refuse it."""
    if name.startswith("/"):
        raise UnsafeArchive(f"refusing {what} {name!r}: absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"refusing {what} {name!r}: '..' path component")
    return parts


def check_symlink_target(parts: tuple[str, ...], target: str) -> None:
    """Refuse a relative symlink target that climbs above the layer root."""
    if target.startswith("/"):
        return  # resolved inside the container's root, never followed by us
    depth = len(parts) - 1  # the link lives in its parent directory
    for p in target.split("/"):
        if p == "..":
            depth -= 1
            if depth < 0:
                raise UnsafeArchive(
                    f"refusing symlink {'/'.join(parts)!r} -> {target!r}: "
                    "target leaves the layer directory"
                )
        elif p not in ("", "."):
            depth += 1
