"""Images from a real registry (Debian's docker-registry on loopback) through the docker CLI.

Pull by tag and by digest (and the image runs), Docker's texts for a missing tag, the
linux/amd64 entry of a multi-arch index, a corrupted blob refused with nothing registered,
push after tag (seen by skopeo with its labels, and mounted into a second repository),
save/load round trip, import of a rootfs tar, prune (dangling, then -a), history, token
auth with `docker login`, the per-layer progress lines; the journal replays after.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections.abc import Iterator

import pytest

from events import model as e
from tests.e2e.conftest import Engine, wait_for
from tests.e2e.dockerapi import DockerApi, daemon_error, start_api, track_created
from tests.e2e.registry import PASSWORD, USER, Registry, start_registry
from tests.imagebuild import (
    Entry,
    SavedImage,
    busybox_rootfs_entries,
    diff_id,
    docker_save_tar,
    image_config,
    layer_tar,
)

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def registry(moor_engine: Engine) -> Iterator[Registry]:
    yield from start_registry(moor_engine.workdir)


@pytest.fixture(scope="module")
def docker_api(moor_engine: Engine) -> Iterator[DockerApi]:
    # Small push chunks, so a busybox layer goes up in PATCHes and a config in one PUT.
    moor_engine.env["MOOR_PUSH_CHUNK_SIZE"] = str(256 << 10)
    api = start_api(moor_engine, "registry-api")
    try:
        yield next(api)
    finally:
        moor_engine.env.pop("MOOR_PUSH_CHUNK_SIZE", None)
        next(api, None)


@pytest.fixture(scope="module")
def private(moor_engine: Engine) -> Iterator[Registry]:
    yield from start_registry(moor_engine.workdir, token=True)


@pytest.fixture
def dk(engine: Engine, docker_api: DockerApi) -> Iterator[DockerApi]:
    yield from track_created(engine, docker_api)


def _two_layer_archive(path: str, tag: str, label: str, arch: str = "amd64") -> str:
    """A docker-save archive: busybox, plus a small layer with /etc/which = label."""
    lower = layer_tar(busybox_rootfs_entries())
    upper = layer_tar([Entry("etc/", "dir"), Entry("etc/which", data=f"{label}\n".encode())])

    class _Image(SavedImage):
        def config(self) -> bytes:
            return image_config([diff_id(x) for x in self.layers], cmd=("cat", "/etc/which"),
                                labels={"moorage.test": label}, arch=arch)

    return docker_save_tar(path, [_Image(layers=[lower, upper], tags=[tag])])


@pytest.fixture(scope="module")
def seeded(moor_engine: Engine, registry: Registry) -> str:
    """Seed `<host>/seed/app:v1` with skopeo from a docker-save archive; return its name."""
    name = f"seed/app{moor_engine.token}"
    archive = _two_layer_archive(os.path.join(moor_engine.workdir, "seed.tar"),
                                 f"{name}:v1", "seeded")
    registry.skopeo_copy(archive, f"{name}:v1")
    return f"{registry.host}/{name}"


def _cleanup(dk: DockerApi, *refs: str) -> None:
    dk.docker("rmi", "-f", *refs, check=False)


def test_pull_by_tag_then_digest_runs_and_shows_progress(dk: DockerApi, registry: Registry,
                                                         seeded: str) -> None:
    ref = f"{seeded}:v1"
    done = dk.docker("pull", ref)
    lines = done.stdout.splitlines()
    assert lines[0] == f"v1: Pulling from {seeded}", done.stdout
    # busybox's layer is the engine's own; the upper one comes from the registry.
    assert [line.split(": ", 1)[1] for line in lines[1:3]] == ["Already exists",
                                                              "Pulling fs layer"], done.stdout
    assert sum(line.endswith("Pull complete") for line in lines) == 1, done.stdout
    digest_line = next(line for line in lines if line.startswith("Digest: "))
    digest = digest_line.split()[1]
    assert f"Status: Downloaded newer image for {ref}" in lines, done.stdout
    out = dk.docker("run", "--rm", ref).stdout
    assert out == "seeded\n"
    info = json.loads(dk.docker("image", "inspect", ref).stdout)[0]
    assert info["RepoDigests"] == [f"{seeded}@{digest}"]
    assert info["Config"]["Labels"] == {"moorage.test": "seeded"}
    again = dk.docker("pull", ref).stdout
    assert f"Status: Image is up to date for {ref}" in again
    _cleanup(dk, ref)
    by_digest = dk.docker("pull", f"{seeded}@{digest}").stdout
    assert f"Digest: {digest}" in by_digest
    assert dk.docker("run", "--rm", f"{seeded}@{digest}").stdout == "seeded\n"
    _cleanup(dk, f"{seeded}@{digest}")


def _manifest(registry: Registry, name: str, ref: str) -> tuple[str, dict]:
    accept = ("application/vnd.docker.distribution.manifest.v2+json, "
              "application/vnd.oci.image.manifest.v1+json")
    status, headers, body = registry.request("GET", f"/v2/{name}/manifests/{ref}",
                                             headers={"Accept": accept})
    assert status == 200, body
    return "sha256:" + hashlib.sha256(body).hexdigest(), json.loads(body)


def test_missing_tag_gets_dockers_not_found_text(dk: DockerApi, seeded: str) -> None:
    done = dk.docker("pull", f"{seeded}:nope", check=False)
    assert done.returncode != 0
    assert daemon_error(done).endswith(
        f"manifest for {seeded}:nope not found: manifest unknown: manifest unknown")
    bad = dk.docker("pull", "127.0.0.1:1/Upper", check=False)
    assert "invalid reference format" in bad.stderr


def test_multi_arch_index_picks_linux_amd64(dk: DockerApi, engine: Engine,
                                            registry: Registry) -> None:
    name = f"multi/app{engine.token}"
    digests = {}
    for arch in ("arm64", "amd64"):
        archive = _two_layer_archive(os.path.join(engine.workdir, f"{arch}.tar"),
                                     f"{name}:{arch}", arch, arch=arch)
        registry.skopeo_copy(archive, f"{name}:{arch}")
        digest, manifest = _manifest(registry, name, arch)
        digests[arch] = (digest, len(json.dumps(manifest)), manifest["mediaType"])
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": []}
    for arch in ("arm64", "amd64"):
        status, _, body = registry.request("GET", f"/v2/{name}/manifests/{digests[arch][0]}",
                                           headers={"Accept": digests[arch][2]})
        index["manifests"].append({"mediaType": digests[arch][2], "digest": digests[arch][0],
                                   "size": len(body),
                                   "platform": {"architecture": arch, "os": "linux"}})
    body = json.dumps(index).encode()
    status, _, answer = registry.request(
        "PUT", f"/v2/{name}/manifests/latest", body,
        {"Content-Type": "application/vnd.oci.image.index.v1+json"})
    assert status == 201, answer
    ref = f"{registry.host}/{name}:latest"
    out = dk.docker("pull", ref).stdout
    assert f"Digest: sha256:{hashlib.sha256(body).hexdigest()}" in out, out
    assert dk.docker("run", "--rm", ref).stdout == "amd64\n"
    _cleanup(dk, ref)
    dk.docker("pull", "--platform", "linux/arm64", ref)
    labels = json.loads(dk.docker("image", "inspect", ref).stdout)[0]["Config"]["Labels"]
    assert labels == {"moorage.test": "arm64"}
    _cleanup(dk, ref)


def test_corrupted_blob_is_refused_and_nothing_registered(dk: DockerApi, engine: Engine,
                                                          registry: Registry) -> None:
    name = f"corrupt/app{engine.token}"
    archive = _two_layer_archive(os.path.join(engine.workdir, "corrupt.tar"), f"{name}:v1",
                                 f"corrupt-{engine.token}")
    registry.skopeo_copy(archive, f"{name}:v1")
    _, manifest = _manifest(registry, name, "v1")
    top = manifest["layers"][-1]["digest"]
    path = registry.blob_path(top)
    with open(path, "rb") as f:
        size = len(f.read())
    with open(path, "wb") as f:  # same length, other bytes: only the digest can tell
        f.write(gzip.compress(b"x" * size)[:size].ljust(size, b"\0"))
    cursor = engine.last_event_id()
    done = dk.docker("pull", f"{registry.host}/{name}:v1", check=False)
    assert done.returncode != 0
    assert f"filesystem layer verification failed for digest {top}" in done.stderr, done
    listed = dk.docker("images", "--format", "{{.Repository}}").stdout
    assert f"{registry.host}/{name}" not in listed
    image_id = manifest["config"]["digest"]
    assert not any(isinstance(r.event, e.ImageRegistered) and r.event.image_id == image_id
                   for sid, r in engine.events() if sid > cursor)
    store = os.path.join(engine.data_root, "images", "sha256", image_id[7:] + ".json")
    assert not os.path.exists(store)


def test_tag_push_mount_and_skopeo_sees_labels(dk: DockerApi, engine: Engine,
                                               registry: Registry, seeded: str) -> None:
    dk.docker("pull", f"{seeded}:v1")
    first = f"{registry.host}/pushed/one{engine.token}:v2"
    second = f"{registry.host}/pushed/two{engine.token}:v3"
    dk.docker("tag", f"{seeded}:v1", first)
    out = dk.docker("push", first).stdout
    assert out.splitlines()[0] == (f"The push refers to repository "
                                   f"[{first.rsplit(':', 1)[0]}]"), out
    assert "Mounted from seed/app" in out, out
    digest_line = [line for line in out.splitlines() if line.startswith("v2: digest: ")]
    assert digest_line, out
    seen = registry.skopeo_inspect(f"pushed/one{engine.token}:v2")
    assert seen["Labels"] == {"moorage.test": "seeded"}
    assert seen["Digest"] == digest_line[0].split()[2]
    dk.docker("tag", first, second)
    out2 = dk.docker("push", second).stdout
    assert "Mounted from" in out2 or "Layer already exists" in out2, out2
    assert registry.skopeo_inspect(f"pushed/two{engine.token}:v3")["Digest"] == seen["Digest"]
    info = json.loads(dk.docker("image", "inspect", first).stdout)[0]
    assert f"{first.rsplit(':', 1)[0]}@{seen['Digest']}" in info["RepoDigests"]
    # A loaded image (its layers kept as plain tars) goes up gzipped, in chunks.
    local = f"{registry.host}/pushed/local{engine.token}:v1"
    archive = _two_layer_archive(os.path.join(engine.workdir, "local.tar"), local,
                                 f"local-{engine.token}")
    dk.docker("load", "-i", archive)
    out3 = dk.docker("push", local).stdout
    assert "Pushed" in out3, out3
    assert registry.skopeo_inspect(f"pushed/local{engine.token}:v1")["Labels"] == {
        "moorage.test": f"local-{engine.token}"}
    _cleanup(dk, f"{seeded}:v1", first, second, local)
    _cleanup(dk, f"{seeded}@{seen['Digest']}")
    engine.moor("replay", "--verify")


def test_save_load_round_trip_and_history(dk: DockerApi, engine: Engine) -> None:
    a, b = f"round/a{engine.token}:v1", f"round/b{engine.token}:v1"
    for ref, label in ((a, "round-a"), (b, "round-b")):
        dk.docker("load", "-i", _two_layer_archive(
            os.path.join(engine.workdir, f"{label}.tar"), ref, f"{label}-{engine.token}"))
    ids = {r: json.loads(dk.docker("image", "inspect", r).stdout)[0]["Id"] for r in (a, b)}
    rows = dk.docker("history", "--no-trunc", "--human=false", "--format", "{{.ID}}|{{.Size}}",
                     a).stdout.splitlines()
    assert len(rows) == 2 and rows[0].startswith(ids[a]), rows
    assert rows[1].startswith("<missing>"), rows
    # Newest first: the small upper layer, then busybox's (about a megabyte).
    assert int(rows[0].split("|")[1]) < 100 < int(rows[1].split("|")[1]), rows
    out = os.path.join(engine.workdir, "saved.tar")
    dk.docker("save", "-o", out, a, b)
    dk.docker("rmi", a, b)
    loaded = dk.docker("load", "-i", out).stdout
    assert f"Loaded image: {a}" in loaded and f"Loaded image: {b}" in loaded, loaded
    for ref in (a, b):
        assert json.loads(dk.docker("image", "inspect", ref).stdout)[0]["Id"] == ids[ref]
    assert dk.docker("run", "--rm", a).stdout == f"round-a-{engine.token}\n"
    _cleanup(dk, a, b)
    os.unlink(out)


def test_import_rootfs_runs(dk: DockerApi, engine: Engine) -> None:
    ref = f"imported/app{engine.token}:v1"
    tar = os.path.join(engine.workdir, "rootfs.tar")
    with open(tar, "wb") as f:
        f.write(layer_tar(busybox_rootfs_entries(extra=[
            Entry("etc/imported", data=b"imported\n")])))
    out = dk.docker("import", "--change", 'CMD ["cat", "/etc/imported"]', "--message",
                    "from a test", tar, ref).stdout
    assert out.strip().startswith("sha256:")
    assert dk.docker("run", "--rm", ref).stdout == "imported\n"
    history = dk.docker("history", "--format", "{{.Comment}}", ref).stdout
    assert history.strip() == "from a test"
    _cleanup(dk, ref)
    os.unlink(tar)


def test_prune_removes_dangling_then_all_unused(dk: DockerApi, engine: Engine) -> None:
    label = f"moorage.test=prune-{engine.token}"
    ref = f"prune/app{engine.token}:v1"

    def load(n: int) -> str:
        path = _two_layer_archive(os.path.join(engine.workdir, f"p{n}.tar"), ref,
                                  f"prune-{engine.token}")
        # A distinct image per load (another upper layer), same tag and label.
        dk.docker("load", "-i", path)
        return str(json.loads(dk.docker("image", "inspect", ref).stdout)[0]["Id"])

    first = load(1)
    dk.docker("tag", ref, f"prune/keep{engine.token}:v1")
    dk.docker("rmi", f"prune/keep{engine.token}:v1")
    # Import over the same tag: the loaded image loses it and dangles.
    tar = os.path.join(engine.workdir, "p.tar")
    with open(tar, "wb") as f:
        f.write(layer_tar(busybox_rootfs_entries(extra=[Entry("etc/p", data=b"p")])))
    dk.docker("import", "--change", f"LABEL {label}", tar, ref)
    second = json.loads(dk.docker("image", "inspect", ref).stdout)[0]["Id"]
    assert second != first
    out = dk.docker("image", "prune", "-f", "--filter", f"label={label}").stdout
    assert f"deleted: {first}" in out and second not in out, out
    out = dk.docker("image", "prune", "-a", "-f", "--filter", f"label={label}").stdout
    assert f"deleted: {second}" in out, out
    assert f"untagged: {ref}" in out, out
    os.unlink(tar)
    engine.moor("replay", "--verify")


def test_auth_pull_needs_login(dk: DockerApi, engine: Engine, private: Registry) -> None:
    name = f"private/app{engine.token}"
    archive = _two_layer_archive(os.path.join(engine.workdir, "private.tar"), f"{name}:v1",
                                 f"private-{engine.token}")
    private.skopeo_copy(archive, f"{name}:v1", f"--dest-creds={USER}:{PASSWORD}")
    ref = f"{private.host}/{name}:v1"
    done = dk.docker("pull", ref, check=False)
    assert done.returncode != 0
    assert daemon_error(done).endswith(
        f"pull access denied for {private.host}/{name}, repository does not exist or may "
        "require 'docker login': denied: requested access to the resource is denied"), done
    wrong = dk.docker("login", private.host, "-u", USER, "-p", "wrong", check=False)
    assert wrong.returncode != 0 and "unauthorized" in wrong.stderr, wrong
    dk.docker("login", private.host, "-u", USER, "-p", PASSWORD)
    dk.docker("pull", ref)
    assert dk.docker("run", "--rm", ref).stdout == f"private-{engine.token}\n"
    assert any(f"user={USER}" in line for line in private.token_log), private.token_log
    dk.docker("logout", private.host)
    _cleanup(dk, ref)


def test_image_events_are_dockers(dk: DockerApi, engine: Engine, seeded: str) -> None:
    start = time.time()
    since = str(int(start) + 1)
    time.sleep(int(start) + 1 - start)  # every event below is at or after `since`
    dk.docker("pull", f"{seeded}:v1")
    dk.docker("tag", f"{seeded}:v1", f"ev/app{engine.token}:v1")
    out = os.path.join(engine.workdir, "ev.tar")
    dk.docker("save", "-o", out, f"ev/app{engine.token}:v1")
    dk.docker("rmi", f"ev/app{engine.token}:v1", f"{seeded}:v1")

    def lines() -> list[str]:
        return dk.docker("events", "--since", since, "--until", "0s", "--filter", "type=image",
                         "--format", "{{.Action}} {{.Actor.ID}}").stdout.splitlines()

    # The last rmi untags the tag and the repository digest, then deletes (Docker's order).
    wanted = ["pull", "tag", "save", "untag", "untag", "untag", "delete"]
    wait_for(lambda: [x.split()[0] for x in lines()] == wanted, 15, "the image events",
             lambda: repr(lines()))
    assert lines()[0] == f"pull {seeded}:v1"
    os.unlink(out)
    engine.moor("replay", "--verify")


def test_moor_pull_prints_layers_and_registers(engine: Engine, registry: Registry,
                                               seeded: str) -> None:
    ref = f"{seeded}:v1"
    out = engine.moor("pull", ref).stdout
    assert f"Status: Downloaded newer image for {ref}" in out or (
        f"Status: Image is up to date for {ref}" in out), out
    assert "Pull complete" in out or "Already exists" in out, out
    world_tags = engine.client and engine.moor("images").stdout
    assert seeded in world_tags
    engine.moor("rmi", ref)
