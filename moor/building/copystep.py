"""COPY and ADD steps: where the files come from, who owns them, the layer they make.

Sources come from the build context (minus what `.dockerignore` excludes) or, with
`--from`, from a finished stage or a local image. `--chown` names are looked up in the
destination image's `/etc/passwd` and `/etc/group`, as the classic builder does. The
layer is written from the plan (workers.storage.buildcopy) straight into the store: no
container is involved.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from engine.errors import InvalidParameter
from moor.building.context import Prepared
from moor.building.dockerfile import Instruction
from moor.building.instructions import StageState
from moor.building.shellwords import expand
from workers.storage.buildcopy import CopyPlan, extract_archive, plan_copy, write_copy_layer
from workers.storage.buildimages import doc_layers, image_doc
from workers.storage.buildview import TreeView
from workers.storage.commit import spool_layer
from workers.storage.images import StoreWriter, get_image

__all__ = ["add_layer", "plan"]


class _Stage(Protocol):
    image_id: str
    doc: dict[str, Any]


def _source(root: str, prepared: Prepared, built: Mapping[str, _Stage],
            ref: str) -> TreeView:
    if not ref:
        ignore = prepared.ignore
        return TreeView([prepared.context_dir], skip=ignore.excluded if ignore.patterns
                        else None, descend_skipped=ignore.has_exceptions())
    stage = built.get(ref.lower())
    if stage is not None:
        return TreeView(doc_layers(root, stage.doc))
    if ref.isdigit():  # an index of a stage not built before this one
        raise InvalidParameter(f"invalid from flag value {ref}: refers to current build "
                               "stage or a later one")
    info = get_image(root, ref)
    return TreeView(doc_layers(root, image_doc(root, info.id)))


def _id_in(view: TreeView, path: str, name: str, what: str) -> int:
    """Return the numeric id of a user or group named in the image's passwd/group file."""
    if name.isdigit():
        return int(name)
    found = view.lookup(view.resolve(path))
    lines = []
    if found is not None and not found.is_dir:
        with open(found.host, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    for line in lines:
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name and fields[2].isdigit():
            return int(fields[2])
    raise InvalidParameter(f"unable to convert uid/gid chown string to host mapping: "
                           f"can't find {what} for {'user' if what == 'uid' else 'group'} "
                           f"{name}: no matching entries in {path.split('/')[-1]} file")


def _owner(view: TreeView, chown: str) -> tuple[int, int]:
    user, _, group = chown.partition(":")
    uid = _id_in(view, "etc/passwd", user, "uid")
    if not group:
        # A user name alone takes the user's primary group, as in the passwd file.
        if user.isdigit():
            return uid, uid
        found = view.lookup(view.resolve("etc/passwd"))
        if found is not None:
            with open(found.host, encoding="utf-8", errors="replace") as f:
                for line in f.read().splitlines():
                    fields = line.split(":")
                    if len(fields) > 3 and fields[0] == user and fields[3].isdigit():
                        return uid, int(fields[3])
        return uid, uid
    return uid, _id_in(view, "etc/group", group, "gid")


def plan(root: str, prepared: Prepared, built: Mapping[str, _Stage], state: StageState,
         parent_doc: dict[str, Any], inst: Instruction, words: list[str]
         ) -> tuple[CopyPlan, str, Callable[[], None]]:
    """Plan the step; return the plan, its history text and a clean-up to call after."""
    flags = inst.flags
    if inst.keyword == "ADD" and "from" in flags:
        raise InvalidParameter("ADD does not support the --from flag")
    env = state.env()
    chown = expand(flags.get("chown", ""), env, state.escape)
    chmod_text = expand(flags.get("chmod", ""), env, state.escape)
    chmod = None
    if chmod_text:
        try:
            chmod = int(chmod_text, 8)
        except ValueError:
            raise InvalidParameter(f"invalid chmod parameter: {chmod_text}") from None
    dest_view = TreeView(doc_layers(root, parent_doc))
    owner = _owner(dest_view, chown) if chown else None
    src = _source(root, prepared, built, expand(flags.get("from", ""), env, state.escape))
    spool = os.path.join(root, "tmp")
    os.makedirs(spool, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="build-add-", dir=spool)
    try:
        result = plan_copy(src, dest_view, words[:-1], words[-1],
                           workdir=state.config.get("WorkingDir") or "/",
                           what=inst.keyword, owner=owner, chmod=chmod,
                           extract=(lambda p: extract_archive(p, scratch))
                           if inst.keyword == "ADD" else None)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    opts = (f" --chown={chown}" if chown else "") + (f" --chmod={chmod_text}"
                                                     if chmod_text else "")
    comment = f"{inst.keyword}{opts} {result.checksum} in {words[-1]} "
    return result, comment, lambda: shutil.rmtree(scratch, ignore_errors=True)


def add_layer(store: StoreWriter, root: str, copy: CopyPlan) -> str:
    """Write the plan as a layer into the store (its lock held); return the diff id."""
    return spool_layer(store, root, lambda tar: write_copy_layer(copy, tar))
