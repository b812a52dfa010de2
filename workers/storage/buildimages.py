"""Store the builder's step images and its cache index in the image store.

Each step makes a child image of the previous one: the parent's config JSON with the new
Config, one more history entry (`created_by`, `empty_layer` for a metadata step) and, for
RUN, COPY and ADD, one more layer. Like images the classic builder makes, it records
`parent` and `container_config` (the step's run config). The cache index maps a step's
key (moor.building.instructions.cache_key: the parent and the run config) to the image
that step made, under ``build/cache/`` in the data root: only images built here are found,
as Docker's cache never serves pulled or loaded images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from workers.storage.commit import image_doc
from workers.storage.imageconfig import HEX, host_arch
from workers.storage.images import ImageInfo, StoreWriter, dirs_of_layers, get_image, writing
from workers.storage.storefiles import images_dir, write_atomic

__all__ = ["add_step_image", "cache_get", "cache_put", "doc_layers", "image_doc",
           "scratch_doc", "tag_image"]


def scratch_doc() -> dict[str, Any]:
    """The empty base of `FROM scratch`."""
    return {"architecture": host_arch(), "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": []}, "history": []}


def doc_layers(root: str, doc: dict[str, Any]) -> list[str]:
    """Return the layer dirs of an image doc, top-most first."""
    return dirs_of_layers(root, doc.get("rootfs", {}).get("diff_ids") or [])


def add_step_image(root: str, parent_id: str, parent: dict[str, Any], *,
                   config: dict[str, Any], created_by: str, run_config: dict[str, Any],
                   layer: Callable[[StoreWriter], str] | None = None,
                   container_id: str = "", author: str = "") -> tuple[str, dict[str, Any]]:
    """Store the step's image (`layer` adds its layer under the store's lock, so nothing
    collects it first); return its id and doc."""
    when = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    entry: dict[str, Any] = {"created": when, "created_by": created_by}
    if author:
        entry["author"] = author
    if layer is None:
        entry["empty_layer"] = True
    with writing(root) as store:
        diff_ids = list(parent.get("rootfs", {}).get("diff_ids") or [])
        if layer is not None:
            diff_ids.append(layer(store))
        doc = {**parent, "config": config, "created": when,
               "history": [*(parent.get("history") or []), entry],
               "rootfs": {"type": "layers", "diff_ids": diff_ids},
               "container_config": run_config}
        if parent_id:
            doc["parent"] = parent_id
        else:
            doc.pop("parent", None)
        doc["container"] = container_id
        if author:
            doc["author"] = author
        raw = json.dumps(doc, separators=(",", ":")).encode()
        info = store.add_image(raw, [])
    return info.id, doc


def tag_image(root: str, image_id: str, tags: Sequence[str]) -> ImageInfo:
    """Point tags at a stored image; return it as the engine registers it."""
    if not tags:
        return get_image(root, image_id)
    with open(os.path.join(images_dir(root), image_id.removeprefix("sha256:") + ".json"),
              "rb") as f:
        raw = f.read()
    with writing(root) as store:
        return store.add_image(raw, tags)


def _cache_path(root: str, key: str) -> str:
    return os.path.join(root, "build", "cache", key)


def cache_get(root: str, key: str) -> str | None:
    """Return the image a step with this key made, if it is still stored."""
    try:
        with open(_cache_path(root, key)) as f:
            image_id = f.read().strip()
    except FileNotFoundError:
        return None
    hexpart = image_id.removeprefix("sha256:")
    if not HEX.fullmatch(hexpart) or not os.path.exists(
            os.path.join(images_dir(root), hexpart + ".json")):
        return None  # removed since (rmi, prune): a miss
    return image_id


def cache_put(root: str, key: str, image_id: str) -> None:
    """Remember which image the step with this key made (the newest wins)."""
    os.makedirs(os.path.dirname(_cache_path(root, key)), exist_ok=True)
    write_atomic(_cache_path(root, key), image_id.encode())
