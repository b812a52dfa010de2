"""Images through `moor`: import a rootfs, load `docker save` and OCI archives whose upper
layer whites out a lower file, run containers from them, list and remove them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from events import model as e
from tests.e2e.conftest import Engine
from tests.imagebuild import (
    Entry,
    SavedImage,
    busybox_rootfs_entries,
    docker_save_tar,
    find_busybox,
    layer_tar,
    oci_layout,
)

pytestmark = pytest.mark.privileged

# Reads the layer's file and tells whether the lower layer's /etc/motd shows through.
PROBE = ("sh", "-c", "cat /etc/layer 2>/dev/null; "
                     "if [ -e /etc/motd ]; then echo motd-present; else echo motd-gone; fi")


def upper_layer(text: str) -> bytes:
    """A layer that deletes the lower /etc/motd (a whiteout) and adds /etc/layer."""
    return layer_tar([Entry("etc/", "dir"), Entry("etc/.wh.motd"),
                      Entry("etc/layer", data=text.encode())])


@pytest.fixture(scope="module")
def lower_layer() -> bytes:
    busybox = find_busybox()
    assert busybox is not None  # the engine fixture already required it
    return layer_tar(busybox_rootfs_entries(busybox))


def probe(engine: Engine, image: str) -> str:
    """Run PROBE in a container of image and return its output (from `moor logs`)."""
    after = engine.last_event_id()
    cid = engine.create(*PROBE, image=image)
    engine.client.start(cid)
    died = engine.wait_event(cid, after, e.ContainerDied)
    assert died.exit_code == 0
    return engine.moor("logs", cid).stdout


def image_rows(engine: Engine) -> dict[str, str]:
    """Return `moor images` as {"repo:tag": short id}."""
    lines = engine.moor("images").stdout.splitlines()
    assert lines[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"], lines
    return {f"{w[0]}:{w[1]}": w[2] for w in (line.split() for line in lines[1:])}


def test_imported_busybox_is_listed_and_runs(engine: Engine) -> None:
    assert image_rows(engine)["busybox:latest"] == engine.image_id[7:19]
    inspected = engine.moor("inspect", "--type", "image", "busybox").stdout
    assert engine.image_id in inspected
    # The lower file of the layered images below is there in the plain rootfs.
    assert probe(engine, "busybox") == "motd-present\n"


def test_docker_save_and_oci_layout_load_and_their_whiteouts_hide_lower_files(
        engine: Engine, lower_layer: bytes, tmp_path: Path) -> None:
    saved = docker_save_tar(str(tmp_path / "saved.tar"), [
        SavedImage([lower_layer, upper_layer("from docker save\n")], tags=("layered:docker",))])
    layout = oci_layout(str(tmp_path / "layout"), [
        SavedImage([lower_layer, upper_layer("from oci\n")], tags=("layered:oci",))])
    assert os.path.isdir(layout)

    assert engine.moor("image", "load", "-i", saved).stdout == "Loaded image: layered:docker\n"
    assert engine.moor("image", "load", "-i", layout).stdout == "Loaded image: layered:oci\n"

    rows = image_rows(engine)
    assert {"busybox:latest", "layered:docker", "layered:oci"} <= set(rows), rows
    assert len({rows["busybox:latest"], rows["layered:docker"], rows["layered:oci"]}) == 3

    assert probe(engine, "layered:docker") == "from docker save\nmotd-gone\n"
    assert probe(engine, "layered:oci") == "from oci\nmotd-gone\n"


def test_rmi_is_refused_while_a_container_uses_the_image(engine: Engine, lower_layer: bytes,
                                                         tmp_path: Path) -> None:
    saved = docker_save_tar(str(tmp_path / "rmi.tar"), [
        SavedImage([lower_layer, upper_layer("rmi\n")], tags=("rmi-me:v1",))])
    engine.moor("image", "load", "-i", saved)
    short = image_rows(engine)["rmi-me:v1"]
    image_id = json.loads(engine.moor("inspect", "--type", "image", "rmi-me:v1").stdout)[0]["Id"]
    cid = engine.run("sleep", "1000", image="rmi-me:v1")

    running = engine.moor("rmi", short, check=False)
    assert running.returncode != 0
    assert running.stderr == (f"Error response from daemon: conflict: unable to delete {short} "
                              f"(cannot be forced) - image is being used by running container "
                              f"{cid[:12]}\n")

    engine.client.kill(cid)
    engine.wait_event(cid, "0-0", e.ContainerDied)
    stopped = engine.moor("rmi", short, check=False)
    assert stopped.returncode != 0
    assert stopped.stderr == (f"Error response from daemon: conflict: unable to delete {short} "
                              f"(must be forced) - image is being used by stopped container "
                              f"{cid[:12]}\n")
    assert "rmi-me:v1" in image_rows(engine)  # refused: nothing was removed

    engine.moor("rm", cid)
    done = engine.moor("rmi", "rmi-me:v1")
    assert done.stdout.splitlines()[0] == "Untagged: rmi-me:v1"
    assert any(line.startswith(f"Deleted: sha256:{short}") for line in done.stdout.splitlines())
    assert "rmi-me:v1" not in image_rows(engine)
    assert image_id.startswith(f"sha256:{short}")
    assert not os.path.exists(os.path.join(engine.data_root, "images", "sha256",
                                           image_id[7:] + ".json"))
    # The shared busybox layer stays for the images that still use it.
    assert probe(engine, "busybox") == "motd-present\n"


def test_rmi_by_tag_is_refused_with_dockers_repository_reference_text(
        engine: Engine, lower_layer: bytes, tmp_path: Path) -> None:
    saved = docker_save_tar(str(tmp_path / "tag.tar"), [
        SavedImage([lower_layer, upper_layer("tag\n")], tags=("rmi-tag:v1",))])
    engine.moor("image", "load", "-i", saved)
    short = image_rows(engine)["rmi-tag:v1"]
    cid = engine.create("true", image="rmi-tag:v1")
    refused = engine.moor("rmi", "rmi-tag:v1", check=False)
    assert refused.returncode != 0
    assert refused.stderr == ('Error response from daemon: conflict: unable to remove repository '
                              f'reference "rmi-tag:v1" (must force) - container {cid[:12]} is '
                              f'using its referenced image {short}\n')
