"""Decide image facts beyond registration and removal: tag, push, noted actions. Pure.

Handlers of `engine.core.decide` (Docker's `image_tag.go`, `distribution/push.go` and the
access events `save` and `prune`). Registration and removal stay in `catalog`.
"""

from __future__ import annotations

from commands import schema as c
from engine.core import names
from engine.core.state import World
from engine.errors import InvalidParameter
from events import model as e

__all__ = ["NOTED_IMAGE_ACTIONS", "note_image_action", "record_push", "tag_image"]

# Docker's image event actions that record an access, not a change of state.
NOTED_IMAGE_ACTIONS = frozenset(("save", "prune"))


def tag_image(world: World, env: c.Envelope, cmd: c.TagImage) -> tuple[str, list[e.Event]]:
    """`docker tag`: the reference moves to this image (the API checked its grammar)."""
    image_id = names.resolve_image(world, cmd.ref)
    tag = names.normalize_image_ref(cmd.tag)
    if "@" in tag or tag.startswith("sha256:"):
        raise InvalidParameter("refusing to create a tag with a digest reference")
    return "", [e.ImageTagged(image_id=image_id, tag=tag)]


def record_push(world: World, env: c.Envelope,
                cmd: c.RecordImagePush) -> tuple[str, list[e.Event]]:
    image_id = names.resolve_image(world, cmd.ref)
    if cmd.repo_digest and "@sha256:" not in cmd.repo_digest:
        raise InvalidParameter(f"invalid repository digest {cmd.repo_digest!r}")
    return "", [e.ImagePushed(image_id=image_id, ref=cmd.pushed, repo_digest=cmd.repo_digest)]


def note_image_action(world: World, env: c.Envelope,
                      cmd: c.NoteImageAction) -> tuple[str, list[e.Event]]:
    """Record an access the API already performed (its own guards gave Docker's texts)."""
    if cmd.action not in NOTED_IMAGE_ACTIONS:
        raise InvalidParameter(f"unknown image action {cmd.action!r}: expected one of "
                               f"{', '.join(sorted(NOTED_IMAGE_ACTIONS))}")
    image_id = names.resolve_image(world, cmd.ref) if cmd.ref else ""
    return "", [e.ImageActionNoted(image_id=image_id, action=cmd.action,
                                   attributes=cmd.attributes)]
