"""Container names and lookups: Docker's name rule, generated names, ref resolution."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Container as Container_names  # any `in`-able: dicts of names

from commands import schema as c
from engine.core.state import Container, World
from engine.errors import Conflict, InvalidParameter, NotFound, NotModified
from engine.shards import home_of_name, shard_of_id
from events import model as e

__all__ = ["Held", "familiar_digest_ref", "generate_name", "holder_of", "is_full_id", "name_conflict",
           "normalize_image_ref", "release_name", "reserve_name", "resolve", "resolve_image",
           "valid_name"]

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


def generate_name(container_id: str, taken: Container_names[str], shards: int = 1) -> str:
    """Pick an adjective_surname name derived from the id (deterministic, so replayable).

    Like Docker: up to six tries, tries two to six append a digit, then the short id.
    With several shards the name must be homed in the container's own shard (the shard
    its id names), so its holder is known where the name's home says: names whose home
    is elsewhere are skipped, and more candidates are drawn (a deterministic sequence).
    """
    own = shard_of_id(container_id, shards)
    digest = hashlib.sha256(container_id.encode()).digest()
    base = f"{_ADJECTIVES[digest[0] % len(_ADJECTIVES)]}_{_SURNAMES[digest[1] % len(_SURNAMES)]}"
    tries = 6 if shards <= 1 else 6 + 64 * shards
    for attempt in range(tries):
        if attempt == 0:
            name = base
        elif attempt < 6:
            name = f"{base}{digest[1 + attempt] % 10}"
        else:
            name = f"{base}{attempt}"
        if name not in taken and home_of_name(name, shards) == own:
            return name
    return container_id[:12]


class Held:
    """The names held in a world, as an `in`-able view (no copy): its containers' and
    its reservations'."""

    __slots__ = ("world",)

    def __init__(self, world: World) -> None:
        self.world = world

    def __contains__(self, name: object) -> bool:
        return name in self.world.names or name in self.world.reserved


def holder_of(world: World, name: str) -> str | None:
    """Return who holds `name` here: one of this shard's containers, or the container of
    another shard this shard (the name's home) reserved it for; None when free."""
    return world.names.get(name) or world.reserved.get(name)


def name_conflict(name: str, holder: str) -> Conflict:
    """Docker's name conflict (409)."""
    return Conflict(
        f'Conflict. The container name "/{name}" is already in use by container '
        f'"{holder}". You have to remove (or rename) that container to be able to '
        "reuse that name."
    )


def reserve_name(world: World, env: c.Envelope, cmd: c.ReserveName) -> tuple[str, list[e.Event]]:
    """Hold `name` here, its home, for a container of another shard (a rename there)."""
    name = valid_name(cmd.name)
    if not is_full_id(cmd.holder):
        raise InvalidParameter(f"invalid holder id: {cmd.holder!r} (64 lowercase hex expected)")
    holder = holder_of(world, name)
    if holder == cmd.holder:
        raise NotModified(f"name {name} is already reserved for {cmd.holder}")
    if holder is not None:
        raise Conflict(f"Error when allocating new name: {name_conflict(name, holder).message}")
    return "", [e.NameReserved(name=name, holder=cmd.holder)]


def release_name(world: World, env: c.Envelope, cmd: c.ReleaseName) -> tuple[str, list[e.Event]]:
    """Give back a reservation; a name reserved for someone else (or not at all) stays."""
    name = valid_name(cmd.name)
    if world.reserved.get(name) != cmd.holder:
        raise NotModified(f"name {name} is not reserved for {cmd.holder}")
    return "", [e.NameReleased(name=name, holder=cmd.holder)]


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
    ref = _familiar_name(ref)
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


def familiar_digest_ref(ref: str) -> str:
    """Write `docker.io/library/busybox[:tag]@sha256:...` as `busybox@sha256:...`."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:  # a tag beside the digest is ignored, as Docker does
        name = name[:len(name) - len(last)] + last.split(":", 1)[0]
    return f"{_familiar_name(name)}@{digest}"


def _familiar_name(name: str) -> str:
    """Drop Docker Hub's registry and `library/`, as Docker shows a name."""
    for registry in ("docker.io/", "index.docker.io/"):
        if name.startswith(registry):
            name = name[len(registry):]
            if name.startswith("library/") and name.count("/") == 1:
                name = name[len("library/"):]
            break
    return name


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
