"""Check image references against Docker's grammar before they become tags in the store."""

from __future__ import annotations

import re

from engine.core.names import normalize_image_ref
from engine.errors import InvalidParameter

__all__ = ["InvalidReference", "valid_tag"]

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")


class InvalidReference(InvalidParameter):
    """Signal an image reference Docker would refuse."""


def valid_tag(ref: str) -> str:
    """Return ref as a tag in the engine's normal form, or raise if Docker would refuse it.

    Tags come from untrusted archives too, so the grammar is checked here; the normal form
    itself ("busybox" -> "busybox:latest") is the engine's, so both agree on every tag.
    """
    if "@" in ref:
        raise InvalidReference(f"invalid reference format: a tag cannot be a digest: {ref!r}")
    name, tag = ref, "latest"
    slash, colon = ref.rfind("/"), ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    domain, _, path = name.partition("/")
    # Docker treats the first component as a registry only if it looks like a host.
    if not (path and ("." in domain or ":" in domain or domain == "localhost")):
        domain, path = "", name
    if path.lower() != path:
        raise InvalidReference(
            f"invalid reference format: repository name must be lowercase: {ref!r}")
    if (not _TAG.fullmatch(tag) or not _PATH.fullmatch(path) or len(name) > 255
            or (domain and not _DOMAIN.fullmatch(domain))):
        raise InvalidReference(f"invalid reference format: {ref!r}")
    return normalize_image_ref(ref)
