"""Run `diff` and `commit` on this host; shared by the API and the `moor` CLI.

A commit is the image store's work (workers.storage.commit) followed by a
`CommitContainer` command: the image's facts with Docker's commit events (image `create`,
`tag`, container `commit`). A running container is paused around the copy through the
client's own pause and unpause (each a recorded fact too), as dockerd does when `pause`
is true.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from commands.client import Client
from engine.core.state import World
from engine.errors import Conflict
from moor.hostcli import image_fields
from projections.views.inspect import find_container
from workers.storage.changes import Change, read_changes
from workers.storage.commit import commit_image
from workers.storage.images import dirs_of_layers, valid_tag
from workers.storage.rootfs import container_dir

__all__ = ["commit", "container_changes", "upper_dir"]


def upper_dir(data_root: str, cid: str) -> str:
    """Return the container's overlay upper dir on this host (what a commit stores)."""
    return os.path.join(container_dir(data_root, cid), "upper")


def container_changes(data_root: str, world: World, ref: str) -> list[Change]:
    """Return the container's changes against its image's layers (Docker's diff)."""
    ctr = find_container(world, ref)
    image = world.images.get(ctr.image_id)
    lowers = dirs_of_layers(data_root, image.layers) if image is not None else []
    upper = upper_dir(data_root, ctr.id)
    return read_changes(upper, lowers) if os.path.isdir(upper) else []


def commit(client: Client, world: World, data_root: str, ref: str, *, reference: str = "",
           comment: str = "", author: str = "", changes: Sequence[str] = (),
           config: Mapping[str, Any] | None = None, pause: bool = True) -> str:
    """Commit the container's upper dir as a new image, register it; return its id."""
    ctr = find_container(world, ref)
    if ctr.dead:
        raise Conflict(f"You cannot commit container {ctr.id} which is Dead")
    if ctr.removal_in_progress:
        raise Conflict(f"You cannot commit container {ctr.id} which is being removed")
    if reference:
        valid_tag(reference)  # refuse a bad name before pausing or copying anything
    freeze = pause and ctr.running and not ctr.paused
    if freeze:
        client.pause(ctr.id)
    try:
        info = commit_image(data_root, upper_dir(data_root, ctr.id), ctr.image_id, ctr.config,
                            user_config=config, changes=changes, comment=comment,
                            author=author, tags=[reference] if reference else [],
                            container_id=ctr.id)
        client.commit_container(ctr.id, comment=comment, **image_fields(info))
    finally:
        if freeze:
            client.unpause(ctr.id)
    return info.id
