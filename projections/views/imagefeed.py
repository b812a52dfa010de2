"""Docker's image events (`docker events --filter type=image`) for image facts. Pure.

The one home of the image mapping (moby `daemon/images/image_events.go`, `distribution/
pull.go`, `push.go`, `image_delete.go`, `image_tag.go`, `image_prune.go`): Actor.ID is
the image id, except for pull and push, which name the familiar reference; `name` is the
new reference for `tag`, the familiar repository for pull and push, else the image id.
"""

from __future__ import annotations

from typing import Any

from events import model as e

__all__ = ["IMAGE_FACTS", "image_action", "image_actor"]

IMAGE_FACTS = (e.ImageRegistered, e.ImageTagged, e.ImageRemoved, e.ImagePushed,
               e.ImageActionNoted)


def _repository(ref: str) -> str:
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[:len(name) - len(last)] + last.split(":", 1)[0]


def image_action(ev: Any) -> str | None:
    """Return the Docker action of an image fact, or None if ev is not one."""
    if isinstance(ev, e.ImageRegistered):
        if ev.origin == "build":
            return None  # dockerd records no event for a build's images, only their tags
        # The content came whole (`load`), from a commit (`create`), a registry or a tar.
        return {"commit": "create", "pull": "pull", "import": "import"}.get(ev.origin, "load")
    if isinstance(ev, e.ImageTagged):
        return "tag"
    if isinstance(ev, e.ImageRemoved):
        return "delete" if ev.deleted else "untag"
    if isinstance(ev, e.ImagePushed):
        return "push"
    if isinstance(ev, e.ImageActionNoted):
        return ev.action
    return None


def image_actor(ev: Any) -> tuple[str, dict[str, str]]:
    """Return (Actor.ID, Attributes) of an image fact's Docker event."""
    if isinstance(ev, e.ImageRegistered) and ev.origin == "pull" and ev.ref:
        return ev.ref, {**ev.config.labels, "name": _repository(ev.ref)}
    if isinstance(ev, e.ImageRegistered):
        return ev.image_id, {**ev.config.labels, "name": ev.image_id}
    if isinstance(ev, e.ImageTagged):
        return ev.image_id, {"name": ev.tag}
    if isinstance(ev, e.ImagePushed):
        return ev.ref, {"name": _repository(ev.ref)}
    if isinstance(ev, e.ImageActionNoted):
        attrs = dict(ev.attributes)
        if ev.image_id:
            attrs["name"] = ev.image_id
        return ev.image_id, attrs
    return ev.image_id, {"name": ev.image_id}
