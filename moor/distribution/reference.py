"""Parse image references as Docker does: `[domain[:port]/]path[:tag][@digest]`.

Pure. The normal form is Docker's (distribution/reference `ParseNormalizedNamed`): a name
without a domain lives on docker.io, a one-component docker.io name under `library/`, the
default tag is `latest`; the familiar form strips both again. The texts are Docker's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moor.distribution.errors import InvalidReference

__all__ = ["DEFAULT_DOMAIN", "Reference", "parse_reference", "split_digest"]

DEFAULT_DOMAIN = "docker.io"
_LEGACY_DOMAIN = "index.docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[a-fA-F0-9:]+\])"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
# Anchored as Docker's ReferenceRegexp: name (optional domain), then :tag, then @digest.
_REFERENCE = re.compile(
    rf"((?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::({_TAG}))?(?:@({_DIGEST}))?")
_HEX64 = re.compile(r"[a-f0-9]{64}")
_SHA256 = re.compile(r"sha256:[a-f0-9]{64}")
_NAME_MAX = 255


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised reference; `tag` is "" when only a digest names the image."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The full repository name, e.g. `docker.io/library/busybox`."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker shows it: `busybox`, `127.0.0.1:5000/app`."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        path = self.path
        if path.startswith("library/") and path.count("/") == 1:
            path = path[len("library/"):]
        return path

    @property
    def familiar(self) -> str:
        """The familiar reference with its tag or digest (`busybox:latest`)."""
        out = self.familiar_name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def reference(self) -> str:
        """What a registry's manifest URL names: the digest if any, else the tag."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.domain, self.path, tag, "")

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.domain, self.path, "", digest)


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's splitDockerDomain: is the first component a registry host?"""
    first, slash, rest = name.partition("/")
    if not slash:
        return DEFAULT_DOMAIN, "library/" + name
    if first == "localhost" or any(ch in first for ch in ".:") or first.lower() != first:
        domain, remote = first, rest
    else:
        domain, remote = DEFAULT_DOMAIN, name
    if domain == _LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = "library/" + remote
    return domain, remote


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalise a reference, raising Docker's texts for what it refuses.

    With default_tag, a reference with neither tag nor digest gets `latest`.
    """
    if _HEX64.fullmatch(text):
        raise InvalidReference(f"invalid repository name ({text}), cannot specify 64-byte "
                               "hexadecimal strings")
    domain, remainder = _split_domain(text)
    remote = remainder.split(":", 1)[0].split("@", 1)[0]
    if remote.lower() != remote:
        raise InvalidReference(f"invalid reference format: repository name ({remote}) "
                               "must be lowercase")
    full = f"{domain}/{remainder}"
    m = _REFERENCE.fullmatch(full)
    if m is None:
        if not text:
            raise InvalidReference("repository name must have at least one component")
        raise InvalidReference("invalid reference format")
    name, tag, digest = m.group(1), m.group(2) or "", m.group(3) or ""
    if len(name) > _NAME_MAX:
        raise InvalidReference(f"repository name must not be more than {_NAME_MAX} characters")
    if digest and not _SHA256.fullmatch(digest):
        raise InvalidReference(f"unsupported digest algorithm or format: {digest}")
    if default_tag and not tag and not digest:
        tag = "latest"
    return Reference(domain, name[len(domain) + 1:], tag, digest)


def split_digest(digest: str) -> str:
    """Return the hex of a `sha256:` digest or raise Docker's invalid format text."""
    if not _SHA256.fullmatch(digest):
        raise InvalidReference(f"invalid digest: {digest}")
    return digest[7:]
