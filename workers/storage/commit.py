"""Turn a container's upper dir into a new image (``docker commit``) in the image store.

The layer goes through the same path as ``docker load`` (:meth:`StoreWriter.add_layer`:
a tar, staged and content-addressed by its diff id), and the image config is the base
image's config JSON with the container's Config, the caller's Config and the ``--change``
lines applied (moby ``daemon/commit.go`` ``merge`` and ``builder/dockerfile``'s
``BuildFromConfig``), plus one history entry carrying the comment and author.
"""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, BinaryIO

import msgspec

from engine.errors import InvalidParameter
from events.specs import ContainerConfig, ImageConfig
from workers.storage.changes import write_layer
from workers.storage.execform import json_form
from workers.storage.imageconfig import HEX, docker_config
from workers.storage.images import ImageInfo, StoreWriter, writing
from workers.storage.storefiles import images_dir

__all__ = ["add_upper_layer", "apply_changes", "commit_image", "image_doc", "merge_config",
           "spool_layer"]

_CHANGES = ("CMD", "ENTRYPOINT", "ENV", "EXPOSE", "LABEL", "USER", "VOLUME", "WORKDIR",
            "STOPSIGNAL", "ONBUILD", "HEALTHCHECK")


def _exec_form(rest: str, shell: bool) -> list[str]:
    """Read a JSON array (exec form) or, failing that, a shell-form command."""
    words = json_form(rest)
    if words is not None:
        return words
    return ["/bin/sh", "-c", rest] if shell else [rest]


def _pairs(instr: str, rest: str) -> list[tuple[str, str]]:
    """Read ``K=V K2="v 2"`` (or the legacy ``K V``) as ENV and LABEL do."""
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        key, _, value = rest.partition(" ")
        return [(key, value.strip())]
    if not words or any("=" not in w for w in words):
        raise InvalidParameter(f"{instr} requires at least one argument" if not words
                               else f"Syntax error - can't find = in {rest!r}. "
                               "Must be of the form: name=value")
    return [(k, v) for k, _, v in (w.partition("=") for w in words)]


def apply_changes(config: dict[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """Return an image Config (Docker's names) with Dockerfile change lines applied."""
    out = dict(config)
    for line in (line.strip() for text in changes for line in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        instr, rest = word.upper(), rest.strip()
        if instr not in _CHANGES:
            raise InvalidParameter(f"{instr} is not a valid change command")
        if instr == "HEALTHCHECK":
            raise InvalidParameter("HEALTHCHECK is not supported by moorage's commit")
        if not rest:
            raise InvalidParameter(f"{instr} requires at least one argument")
        if instr in ("CMD", "ENTRYPOINT"):
            out["Cmd" if instr == "CMD" else "Entrypoint"] = _exec_form(rest, shell=True)
            if instr == "ENTRYPOINT":
                out["Cmd"] = None  # as the builder: a new entrypoint resets CMD
        elif instr == "ENV":
            env = list(out.get("Env") or [])
            for key, value in _pairs(instr, rest):
                env = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]
            out["Env"] = env
        elif instr == "LABEL":
            out["Labels"] = {**(out.get("Labels") or {}), **dict(_pairs(instr, rest))}
        elif instr == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            ports.update({p if "/" in p else f"{p}/tcp": {} for p in rest.split()})
            out["ExposedPorts"] = ports
        elif instr == "VOLUME":
            vols = dict(out.get("Volumes") or {})
            names = _exec_form(rest, shell=False) if rest.startswith("[") else rest.split()
            vols.update({v: {} for v in names})
            out["Volumes"] = vols
        elif instr == "WORKDIR":
            out["WorkingDir"] = os.path.join(out.get("WorkingDir") or "/", rest)
        elif instr == "ONBUILD":
            out["OnBuild"] = [*(out.get("OnBuild") or []), rest]
        else:
            out[{"USER": "User", "STOPSIGNAL": "StopSignal"}[instr]] = rest
    return out


def merge_config(base: Mapping[str, Any], container: ContainerConfig,
                 user: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the new image's Config: the user's fields win, unset ones come from the
    container (its Config already holds the image defaults merged at create), the rest of
    the base image's Config (Volumes, OnBuild, …) is kept."""
    fields = {k: v for k, v in msgspec.to_builtins(container).items()
              if k in ImageConfig.__struct_fields__}
    out = {**base, **docker_config(ImageConfig(**fields))}
    for key, value in (user or {}).items():
        if value not in (None, "", [], {}):
            out[key] = value
    return msgspec.json.decode(msgspec.json.encode(out))  # tuples as JSON lists


def image_doc(root: str, image_id: str) -> dict[str, Any]:
    """Return a stored image's config JSON as a dict (the base a new image extends)."""
    hexpart = image_id.removeprefix("sha256:")
    if not HEX.fullmatch(hexpart):
        raise InvalidParameter(f"invalid image id: {image_id}")
    with open(os.path.join(images_dir(root), hexpart + ".json"), "rb") as f:
        doc: dict[str, Any] = json.loads(f.read())
    return doc


def spool_layer(store: StoreWriter, root: str, write: Callable[[BinaryIO], object]) -> str:
    """Add the tar `write` produces to the store as a layer (the store's lock held by
    `store`, so nothing collects it before an image names it); return its diff id. The tar
    is spooled under the data root, not in memory."""
    spool = os.path.join(root, "tmp")
    os.makedirs(spool, exist_ok=True)
    with tempfile.TemporaryFile(dir=spool) as tar:
        write(tar)
        tar.seek(0)
        return store.add_layer(tar)


def add_upper_layer(store: StoreWriter, root: str, upper: str) -> str:
    """Add a container's upper dir to the store as a layer; return its diff id."""
    return spool_layer(store, root, lambda tar: write_layer(upper, tar))


def commit_image(root: str, upper: str, base_image_id: str, container: ContainerConfig, *,
                 user_config: Mapping[str, Any] | None = None, changes: Sequence[str] = (),
                 comment: str = "", author: str = "", tags: Sequence[str] = (),
                 container_id: str = "") -> ImageInfo:
    """Store upper as a new top layer over the base image; return the new image."""
    base = image_doc(root, base_image_id)
    config = apply_changes(merge_config(base.get("config") or {}, container, user_config),
                           changes)
    when = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    with writing(root) as store:
        diff_id = add_upper_layer(store, root, upper)
        history = [*(base.get("history") or []),
                   {"created": when, "comment": comment,
                    **({"author": author} if author else {})}]
        doc = {**base, "config": config, "created": when, "history": history,
               "container": container_id,
               "rootfs": {"type": "layers",
                          "diff_ids": [*base["rootfs"]["diff_ids"], diff_id]}}
        if author:
            doc["author"] = author
        doc.pop("comment", None)
        if comment:
            doc["comment"] = comment
        doc.pop("container_config", None)
        return store.add_image(json.dumps(doc, separators=(",", ":")).encode(), tags)
