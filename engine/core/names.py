"""Container names and lookups: Docker's name rule, generated names, ref resolution."""

from __future__ import annotations

import hashlib
import re

from engine.core.state import Container, World
from engine.errors import InvalidParameter, NotFound

__all__ = ["familiar_digest_ref", "generate_name", "is_full_id", "normalize_image_ref",
           "resolve", "resolve_image", "valid_name"]

_HEX = frozenset("0123456789abcdef")
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")

_ADJECTIVES = (
    "amber", "brave", "calm", "dapper", "eager", "fancy", "gentle", "happy", "icy",
    "jolly", "keen", "lively", "mellow", "nimble", "opal", "proud", "quiet", "rapid",
    "serene", "tidy", "upbeat", "vivid", "witty", "zesty", "bold", "crisp", "deft",
    "frosty", "glad", "hardy", "lucid", "merry", "noble", "plucky", "sunny", "swift",
)
_SURNAMES = (
    "curie", "darwin", "euler", "faraday", "galois", "hopper", "hypatia", "kepler",
    "lovelace", "maxwell", "noether", "pasteur", "ramanujan", "shannon", "tesla",
    "turing", "volta", "wiles", "yalow", "zuse", "bohr", "dirac", "fermi", "gauss",
    "hamilton", "jemison", "knuth", "lamarr", "meitner", "newton", "ohm", "planck",
)


def is_full_id(value: str) -> bool:
    """Tell whether value is a full id: 64 lowercase hex digits (containers, image digests)."""
    return len(value) == 64 and not set(value) - _HEX


def valid_name(name: str) -> str:
    """Return the name without its leading slash, or raise Docker's 400."""
    bare = name[1:] if name.startswith("/") else name
    if not _NAME.match(bare):
        raise InvalidParameter(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )
    return bare


def generate_name(container_id: str, taken: dict[str, str]) -> str:
    """Pick an adjective_surname name derived from the id (deterministic, so replayable).

    Like Docker: up to six tries, tries two to six append a digit, then the short id.
    """
    digest = hashlib.sha256(container_id.encode()).digest()
    base = f"{_ADJECTIVES[digest[0] % len(_ADJECTIVES)]}_{_SURNAMES[digest[1] % len(_SURNAMES)]}"
    for attempt in range(6):
        name = base if attempt == 0 else f"{base}{digest[1 + attempt] % 10}"
        if name not in taken:
            return name
    return container_id[:12]


def resolve(world: World, ref: str) -> Container:
    """Find a container by full id, name, or unique id prefix (Docker's lookup order)."""
    if not ref:
        raise InvalidParameter('invalid name or ID supplied: ""')
    found = world.containers.get(ref)
    if found is not None:
        return found
    bare = ref[1:] if ref.startswith("/") else ref
    cid = world.names.get(bare)
    if cid is not None:
        return world.containers[cid]
    if all(ch in "0123456789abcdef" for ch in ref):
        matches = [cid for cid in world.containers if cid.startswith(ref)]
        if len(matches) > 1:
            raise InvalidParameter(f"multiple IDs found with provided prefix: {ref}")
        if matches:
            return world.containers[matches[0]]
    raise NotFound(f"No such container: {ref}")


def normalize_image_ref(ref: str) -> str:
    """Write a reference as Docker shows it: "docker.io/library/busybox" -> "busybox:latest"."""
    if ref.startswith("sha256:") or "@" in ref:
        return ref
    for registry in ("docker.io/", "index.docker.io/"):
        if ref.startswith(registry):
            ref = ref[len(registry):]
            if ref.startswith("library/") and ref.count("/") == 1:
                ref = ref[len("library/"):]
            break
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


def familiar_digest_ref(ref: str) -> str:
    """Write `docker.io/library/busybox[:tag]@sha256:...` as `busybox@sha256:...`."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:  # a tag beside the digest is ignored, as Docker does
        name = name[:len(name) - len(last)] + last.split(":", 1)[0]
    for registry in ("docker.io/", "index.docker.io/"):
        if name.startswith(registry):
            name = name[len(registry):]
            if name.startswith("library/") and name.count("/") == 1:
                name = name[len("library/"):]
            break
    return f"{name}@{digest}"


def resolve_image(world: World, ref: str) -> str:
    """Return the image id for a tag, full id or unique id prefix, or raise 404."""
    tagged = normalize_image_ref(ref)
    image_id = world.tags.get(tagged)
    if image_id is not None:
        return image_id
    if "@" in ref:  # repo@sha256:..., kept in the familiar form by pulls and pushes
        digested = familiar_digest_ref(ref)
        for image in world.images.values():
            if digested in image.repo_digests:
                return image.id
    if ref in world.images:
        return ref
    hexpart = ref[7:] if ref.startswith("sha256:") else ref
    if len(hexpart) >= 4 and all(ch in "0123456789abcdef" for ch in hexpart):
        matches = [i for i in world.images if i[7:].startswith(hexpart)]
        if len(matches) == 1:
            return matches[0]
    raise NotFound(f"No such image: {tagged}")
