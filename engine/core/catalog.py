"""Decide the engine-wide facts: networks and images (Docker's guards and texts).

Handlers of `engine.core.decide`: each returns (container id, events) or raises an
`engine.errors` class, which decide records as a CommandRejected.
"""

from __future__ import annotations

import ipaddress

from commands import schema as c
from engine.core import names
from engine.core.state import World
from engine.errors import Conflict, InvalidParameter, NotModified
from events import model as e

__all__ = ["commit_container", "compact_log", "define_network", "register_image",
           "remove_image"]


_MIN_RETAIN_MS = 60_000  # shorter would forget ids a client may still be retrying


def compact_log(world: World, env: c.Envelope, cmd: c.CompactLog) -> tuple[str, list[e.Event]]:
    if cmd.retain_ms < _MIN_RETAIN_MS:
        raise InvalidParameter(f"retention must be at least {_MIN_RETAIN_MS // 1000}s, "
                               f"got {cmd.retain_ms}ms")
    cutoff_ms = env.issued_at // 1_000_000 - cmd.retain_ms
    return "", [e.LogCompacted(cutoff_ms=cutoff_ms, retain_ms=cmd.retain_ms)]


def define_network(world: World, env: c.Envelope,
                   cmd: c.DefineNetwork) -> tuple[str, list[e.Event]]:
    spec = cmd.network
    try:
        net = ipaddress.IPv4Network(spec.subnet)
        gateway = ipaddress.IPv4Address(spec.gateway)
    except ValueError as exc:
        raise InvalidParameter(f"invalid network config: {exc}") from None
    if gateway not in net or net.prefixlen > 30:
        raise InvalidParameter(f"invalid network config: gateway {gateway} not usable in {net}")
    existing = world.networks.get(spec.name)
    if existing == spec:
        raise NotModified(f"network {spec.name} is already defined")
    if existing is not None:
        raise Conflict(f"network with name {spec.name} already exists")
    return "", [e.NetworkDefined(network=spec)]


def _image_fact(world: World, cmd: c.RegisterImage, tags: tuple[str, ...],
                origin: str = "") -> e.ImageRegistered:
    if not cmd.image_id.startswith("sha256:") or not names.is_full_id(cmd.image_id[7:]):
        raise InvalidParameter(f"invalid image id: {cmd.image_id}")
    known = world.images.get(cmd.image_id)
    digests = cmd.repo_digests
    if known is not None:
        tags = tuple(dict.fromkeys((*known.repo_tags, *tags)))
        digests = tuple(dict.fromkeys((*known.repo_digests, *digests)))
    return e.ImageRegistered(image_id=cmd.image_id, repo_tags=tags, config=cmd.config,
                             layers=cmd.layers, size=cmd.size, created=cmd.created,
                             origin=origin, repo_digests=digests,
                             ref=cmd.source_ref)


def _tags(cmd: c.RegisterImage) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names.normalize_image_ref(t) for t in cmd.repo_tags))


_ORIGINS = ("", "pull", "import", "build")  # a commit has its own command


def register_image(world: World, env: c.Envelope,
                   cmd: c.RegisterImage) -> tuple[str, list[e.Event]]:
    if cmd.origin not in _ORIGINS:
        raise InvalidParameter(f"unknown image origin {cmd.origin!r}")
    if cmd.origin in ("import", "build"):
        # Docker's import and build: the image, then a `tag` per reference.
        return "", [_image_fact(world, cmd, (), origin=cmd.origin),
                    *(e.ImageTagged(image_id=cmd.image_id, tag=t) for t in _tags(cmd))]
    return "", [_image_fact(world, cmd, _tags(cmd), origin=cmd.origin)]


def commit_container(world: World, env: c.Envelope,
                     cmd: c.CommitContainer) -> tuple[str, list[e.Event]]:
    """Docker's commit order: image `create`, image `tag` (with a reference), then the
    container's `commit` (the pause and unpause around it are the committer's own)."""
    ctr = names.resolve(world, cmd.ref)
    if ctr.dead:
        raise Conflict(f"You cannot commit container {ctr.id} which is Dead")
    if ctr.removal_in_progress:
        raise Conflict(f"You cannot commit container {ctr.id} which is being removed")
    tags = _tags(cmd)
    events: list[e.Event] = [_image_fact(world, cmd, (), origin="commit")]
    events += [e.ImageTagged(image_id=cmd.image_id, tag=t) for t in tags]
    events.append(e.ContainerCommitted(image_id=cmd.image_id, image_ref=tags[0] if tags else "",
                                       comment=cmd.comment))
    return ctr.id, events


def _repository(ref: str) -> str:
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[:len(name) - len(last)] + last.split(":", 1)[0]


def _deleted(image_id: str, refs: tuple[str, ...]) -> list[e.Event]:
    """Docker's order: an `untag` per reference, then the `delete`."""
    return [*(e.ImageRemoved(image_id=image_id, untagged=(r,), deleted=False) for r in refs),
            e.ImageRemoved(image_id=image_id, deleted=True)]


def remove_image(world: World, env: c.Envelope, cmd: c.RemoveImage) -> tuple[str, list[e.Event]]:
    image_id = names.resolve_image(world, cmd.ref)
    image = world.images[image_id]
    tag = names.normalize_image_ref(cmd.ref)
    if "@" in cmd.ref:
        tag = names.familiar_digest_ref(cmd.ref)
        if tag in image.repo_digests and (image.repo_tags or len(image.repo_digests) > 1):
            return "", [e.ImageRemoved(image_id=image_id, untagged=(tag,), deleted=False)]
    if tag in image.repo_tags and len(image.repo_tags) > 1:
        return "", [e.ImageRemoved(image_id=image_id, untagged=(tag,), deleted=False)]
    by_id = tag not in image.repo_tags and tag not in image.repo_digests
    if by_id and not cmd.force and len({_repository(t) for t in image.repo_tags}) > 1:
        raise Conflict(f"conflict: unable to delete {image_id[7:19]} (must be forced) - "
                       "image is referenced in multiple repositories")
    # Sorted, so the container named in the message never depends on dict order.
    users = sorted((x for x in world.containers.values() if x.image_id == image_id),
                   key=lambda x: (x.created, x.id))
    short = image_id[7:19]
    if users and tag in image.repo_tags:
        # By reference, Docker refuses untagging a used image unless forced.
        if not cmd.force:
            raise Conflict(f'conflict: unable to remove repository reference "{cmd.ref}" '
                           f"(must force) - container {users[0].id[:12]} is using its "
                           f"referenced image {short}")
        return "", [e.ImageRemoved(image_id=image_id, untagged=(tag,), deleted=False)]
    running = [x for x in users if x.running or x.starting]
    if running:
        raise Conflict(f"conflict: unable to delete {short} (cannot be forced) - image is "
                       f"being used by running container {running[0].id[:12]}")
    if users and not cmd.force:
        raise Conflict(f"conflict: unable to delete {short} (must be forced) - image is "
                       f"being used by stopped container {users[0].id[:12]}")
    if users:
        return "", [e.ImageRemoved(image_id=image_id, untagged=image.repo_tags, deleted=False)]
    return "", _deleted(image_id, (*image.repo_tags, *image.repo_digests))
