"""Read registry manifests and pick the one for a platform. Pure.

Media types are the registries' (Docker schema2 and OCI); a manifest list or OCI index is
narrowed to the requested platform (default linux/amd64, as the engine's host) the way
Docker's `platforms.Only` does: same os and architecture, a matching variant when one is
asked for, entries without a platform matching anything; preference to an exact variant.
"""

from __future__ import annotations

import hashlib

import msgspec

from moor.distribution.errors import BadPlatform, DigestMismatch, RegistryError, RegistryNotFound

__all__ = [
    "ACCEPT",
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LIST",
    "DOCKER_MANIFEST",
    "INDEX_TYPES",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "Descriptor",
    "Index",
    "Manifest",
    "Platform",
    "MANIFEST_TYPES",
    "check_digest",
    "decode_index",
    "decode_manifest",
    "kind_of",
    "parse_platform",
    "select_manifest",
]

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+prettyjws",
                  "application/vnd.docker.distribution.manifest.v1+json")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
# What a pull asks for, as dockerd: every manifest type it can read (schema1 only to refuse).
ACCEPT = ", ".join((DOCKER_MANIFEST, DOCKER_LIST, OCI_MANIFEST, OCI_INDEX, *DOCKER_SCHEMA1))


class Platform(msgspec.Struct, frozen=True, rename={"os_version": "os.version"}):
    architecture: str = ""
    os: str = ""
    variant: str = ""
    os_version: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


class Descriptor(msgspec.Struct, frozen=True, rename="camel"):
    media_type: str = ""
    digest: str = ""
    size: int = -1
    platform: Platform | None = None
    annotations: dict[str, str] | None = None
    urls: list[str] | None = None


class Manifest(msgspec.Struct, frozen=True, rename="camel"):
    config: Descriptor
    schema_version: int = 2
    media_type: str = ""
    layers: list[Descriptor] = []


class Index(msgspec.Struct, frozen=True, rename="camel"):
    schema_version: int = 2
    media_type: str = ""
    manifests: list[Descriptor] = []


class _Probe(msgspec.Struct):
    schemaVersion: int = 0  # noqa: N815 - the wire name
    mediaType: str = ""  # noqa: N815
    manifests: list[object] | None = None
    config: object | None = None


def check_digest(data: bytes, digest: str, what: str) -> None:
    """Refuse content whose sha256 is not the digest that named it."""
    got = "sha256:" + hashlib.sha256(data).hexdigest()
    if got != digest:
        raise DigestMismatch(f"{what}: digest mismatch: got {got}, expected {digest}")


def kind_of(data: bytes, content_type: str) -> str:
    """Return the media type of a manifest body, from the header or the JSON itself."""
    if content_type in (*INDEX_TYPES, *MANIFEST_TYPES, *DOCKER_SCHEMA1):
        return content_type
    try:
        probe = msgspec.json.decode(data, type=_Probe)
    except msgspec.DecodeError as e:
        raise RegistryError(f"invalid manifest: {e}") from e
    if probe.mediaType:
        return probe.mediaType
    if probe.schemaVersion == 1:
        return DOCKER_SCHEMA1[0]
    # OCI allows leaving mediaType out: an index has manifests, an image manifest a config.
    return OCI_INDEX if probe.manifests is not None else OCI_MANIFEST


def decode_manifest(data: bytes) -> Manifest:
    try:
        return msgspec.json.decode(data, type=Manifest)
    except msgspec.DecodeError as e:
        raise RegistryError(f"invalid manifest: {e}") from e


def decode_index(data: bytes) -> Index:
    try:
        return msgspec.json.decode(data, type=Index)
    except msgspec.DecodeError as e:
        raise RegistryError(f"invalid manifest list: {e}") from e


def parse_platform(text: str, default_arch: str = "amd64") -> Platform:
    """Parse `os[/arch[/variant]]` (Docker's --platform); empty means linux/default_arch."""
    if not text:
        return Platform(os="linux", architecture=default_arch)
    parts = text.lower().split("/")
    if len(parts) > 3 or not all(parts):
        raise BadPlatform(f'"{text}": unknown operating system or architecture: '
                          "invalid argument")
    os_, arch, variant = (parts + ["", ""])[:3]
    if os_ != "linux":
        raise BadPlatform(f'"{text}": operating system is not supported')
    arch = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm",
            "armel": "arm"}.get(arch, arch) or default_arch
    if arch == "arm64" and variant == "v8":
        variant = ""  # arm64's only variant is the default one
    return Platform(os=os_, architecture=arch, variant=variant)


def _score(entry: Platform | None, want: Platform) -> int | None:
    """Rank an index entry for want (lower is better); None if it does not match."""
    if entry is None:
        return 2  # an entry without a platform matches anything, after the exact ones
    if entry.os != want.os or entry.architecture != want.architecture:
        return None
    variant = "" if (entry.architecture == "arm64" and entry.variant == "v8") else entry.variant
    if want.variant:
        return 0 if variant == want.variant else None
    return 0 if not variant else 1


def select_manifest(index: Index, want: Platform) -> Descriptor:
    """Return the index entry for want, or raise Docker's no-matching-manifest text."""
    ranked = []
    for n, desc in enumerate(index.manifests):
        score = _score(desc.platform, want)
        if score is not None:
            ranked.append((score, n, desc))
    if not ranked:
        raise RegistryNotFound(f"no matching manifest for {want} in the manifest list "
                               "entries")
    return min(ranked, key=lambda t: (t[0], t[1]))[2]
