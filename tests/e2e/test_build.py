"""`docker build` with the classic builder (DOCKER_BUILDKIT=0) through the real docker CLI.

A two-stage Dockerfile (RUN, COPY --from, ENV, CMD) makes an image that runs and prints
what both stages put in it; the same build again is served from the cache (same id);
`.dockerignore` keeps files out (also when a raw API client sends them); `--build-arg`
and `--target` work; a failing RUN prints Docker's text, keeps its container as dockerd
does unless `--force-rm`; the journal shows each RUN container's create, start, die,
commit and destroy; `moor build` builds the same way; the replay verifies after.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from engine.snapshot import load_world
from events import model as e
from tests.e2e.conftest import Engine, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    UnixHTTPConnection,
    api_fixtures,
)

pytestmark = pytest.mark.privileged


docker_api, dk, base = api_fixtures("build-api", "bd", image="base")


def _context(root: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def _build(dk: DockerApi, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["docker", "build", *args], capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL,
                          env={**dk.docker_env, "DOCKER_BUILDKIT": "0"})
    if check and done.returncode != 0:
        raise AssertionError(f"docker build exited {done.returncode}\nstdout: {done.stdout}\n"
                             f"stderr: {done.stderr}\n{dk.log_tail()}")
    return done


def _built_id(out: str) -> str:
    m = re.search(r"^Successfully built ([0-9a-f]{12})$", out, re.M)
    assert m, out
    return m.group(1)


def _stored_config(engine: Engine, dk: DockerApi, ref: str) -> dict[str, object]:
    """The image's Config as the store keeps it (ONBUILD, HEALTHCHECK, SHELL included)."""
    image_id = dk.docker("image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()
    path = Path(engine.data_root, "images", "sha256", image_id.removeprefix("sha256:") + ".json")
    config: dict[str, object] = json.loads(path.read_text())["config"]
    return config


def _containers(engine: Engine) -> set[str]:
    return set(load_world(engine.redis, engine.keys)[0].containers)


TWO_STAGE = """\
# a comment, then a continuation
FROM {base} AS build
RUN mkdir -p /out \\
 && echo "built by stage one" > /out/msg && echo ran-step-one
COPY greeting.txt /out/
FROM {base}
ENV GREETING=hello WHO="the world"
COPY --from=build /out/ /app/
CMD ["sh", "-c", "cat /app/msg /app/greeting.txt; echo $GREETING $WHO"]
"""


def test_two_stage_build_runs_and_is_cached(dk: DockerApi, base: str, engine: Engine,
                                            tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"Dockerfile": TWO_STAGE.format(base=base),
                              "greeting.txt": "greetings from the context\n"})
    tag = f"app{engine.token}"
    cursor = engine.last_event_id()
    before = _containers(engine)
    out = _build(dk, "-t", tag, ctx).stdout
    try:
        assert "Step 1/7 : FROM " + base + " AS build" in out, out
        assert "Step 2/7 : RUN mkdir -p /out  && echo" in out, out
        assert "ran-step-one" in out and "Using cache" not in out, out
        assert f"Successfully tagged {tag}:latest" in out, out
        first = _built_id(out)
        run = dk.docker("run", "--rm", tag).stdout
        assert run == "built by stage one\ngreetings from the context\nhello the world\n"
        # The RUN went through the engine's lifecycle and is gone (--rm).
        running = re.search(r"Running in ([0-9a-f]{12})", out)
        assert running, out
        facts = [type(r.event) for _, r in engine.events(after=cursor)
                 if r.meta.container_id.startswith(running.group(1))]
        for kind in (e.ContainerCreated, e.ContainerStarted, e.ContainerDied,
                     e.ContainerCommitted, e.ContainerDestroyed):
            assert kind in facts, facts
        assert f"Removed intermediate container {running.group(1)}" in out
        assert _containers(engine) - before == set()
        # docker events shows the build's container actions and the tag.
        def seen() -> list[str]:
            # --until in whole seconds excludes the current one: the CLI rounds it down.
            events = dk.docker("events", "--since", "10m", "--until", "0s", "--format",
                               "{{.Type}} {{.Action}} {{.Actor.ID}}").stdout.splitlines()
            mine = [ln.split()[1] for ln in events
                    if ln.startswith("container") and running.group(1) in ln]
            # dockerd records no event for a build's images, only the tag of the result.
            loads = [ln for ln in events if ln.startswith("image load") and first in ln]
            return mine + loads + [ln for ln in events if ln.startswith("image tag")][-1:]

        wanted = ["create", "start", "die", "commit", "destroy"]
        wait_for(lambda: seen()[:5] == wanted and len(seen()) == 6
                 and seen()[5].startswith("image tag"), 15,
                 "the build's events in docker events", lambda: repr(seen()))
        config = json.loads(dk.docker("image", "inspect", tag).stdout)[0]["Config"]
        assert "GREETING=hello" in config["Env"]
        # The same build again: every step from the cache, the same image.
        again = _build(dk, "-t", tag, ctx).stdout
        assert again.count("---> Using cache") == 5, again
        assert "Running in" not in again, again
        assert _built_id(again) == first
        # A changed file busts the COPY step (its checksum), not the RUN and ENV before it.
        Path(ctx, "greeting.txt").write_text("changed\n")
        third = _build(dk, "-t", tag, ctx).stdout
        assert third.count("---> Using cache") == 2 and _built_id(third) != first, third
        assert dk.docker("run", "--rm", tag).stdout.splitlines()[1] == "changed"
    finally:
        dk.docker("rmi", "-f", tag, check=False)
    engine.moor("replay", "--verify")


def test_dockerignore_excludes_files(dk: DockerApi, base: str, engine: Engine,
                                     tmp_path: Path) -> None:
    dockerfile = (f"FROM {base}\nCOPY . /ctx/\n"
                  'CMD ["sh", "-c", "cd /ctx && find . -type f | sort"]\n')
    ctx = _context(tmp_path, {"Dockerfile": dockerfile,
                              ".dockerignore": "# secrets\nsecret.txt\n**/*.log\nlogs\n"
                                               "!logs/keep.log\n",
                              "secret.txt": "s\n", "app.txt": "a\n", "sub/deep/x.log": "l\n",
                              "logs/keep.log": "k\n", "logs/drop.txt": "d\n"})
    tag = f"ign{engine.token}"
    try:
        _build(dk, "-t", tag, ctx)
        listed = dk.docker("run", "--rm", tag).stdout.split()
        assert listed == ["./.dockerignore", "./Dockerfile", "./app.txt", "./logs/keep.log"]
        # A raw API client that sends everything: the engine applies .dockerignore itself.
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w") as tar:
            tar.add(ctx, arcname=".")
        conn = UnixHTTPConnection(dk.socket, timeout=120)
        try:
            conn.request("POST", f"/v1.44/build?t={tag}-raw&rm=1", body=raw.getvalue(),
                         headers={"Content-Type": "application/x-tar"})
            resp = conn.getresponse()
            lines = [json.loads(x) for x in resp.read().splitlines() if x.strip()]
        finally:
            conn.close()
        assert resp.status == 200 and not [m for m in lines if "error" in m], lines
        assert {"aux": {"ID": lines[-3]["aux"]["ID"]}} in lines
        assert dk.docker("run", "--rm", f"{tag}-raw").stdout.split() == listed
    finally:
        dk.docker("rmi", "-f", tag, f"{tag}-raw", check=False)


ARGS = """\
ARG BASE={base}
FROM $BASE AS first
ARG MSG=default
ARG UNUSED_HERE
ENV FROM_ARG=${{MSG:-none}}
RUN echo "msg is $MSG" > /msg
CMD ["sh", "-c", "cat /msg; echo $FROM_ARG"]
FROM first AS second
RUN echo never-built-with-target
"""


def test_build_arg_and_target(dk: DockerApi, base: str, engine: Engine,
                              tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"Dockerfile": ARGS.format(base=base)})
    tag = f"arg{engine.token}"
    try:
        out = _build(dk, "-t", tag, "--build-arg", "MSG=given", "--target", "first", ctx).stdout
        assert "Step 1/7 : ARG BASE=" in out and "never-built-with-target" not in out, out
        assert dk.docker("run", "--rm", tag).stdout == "msg is given\ngiven\n"
        default = _build(dk, "-t", tag, ctx).stdout
        assert "never-built-with-target" in default, default
        assert dk.docker("run", "--rm", tag).stdout == "msg is default\ndefault\n"
        history = json.loads(dk.http("GET", f"/images/{tag}/history")[2])
        assert any("|1 MSG=default /bin/sh -c echo" in h["CreatedBy"] for h in history), \
            history
    finally:
        dk.docker("rmi", "-f", tag, check=False)


def test_failing_run_reports_docker_text(dk: DockerApi, base: str, engine: Engine,
                                         tmp_path: Path) -> None:
    ctx = _context(tmp_path, {"Dockerfile": f"FROM {base}\nRUN echo before && false\n"})
    before = _containers(engine)
    done = _build(dk, "--force-rm", ctx, check=False)
    assert done.returncode == 1, done
    assert "The command '/bin/sh -c echo before && false' returned a non-zero code: 1" \
        in done.stderr, done.stderr
    assert "before" in done.stdout
    assert _containers(engine) == before  # --force-rm: no intermediate container stays
    # Without --force-rm dockerd keeps the failed step's container; so do we.
    kept = _build(dk, ctx, check=False)
    assert kept.returncode == 1
    left = _containers(engine) - before
    assert len(left) == 1
    cid = left.pop()
    assert dk.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                     cid).stdout.strip() == "exited 1"
    dk.docker("rm", cid)
    engine.moor("replay", "--verify")


def test_moor_build_cli(engine: Engine, docker_api: DockerApi, base: str,
                        tmp_path: Path) -> None:
    dockerfile = (f"FROM {base}\nWORKDIR /srv\nCOPY --chown=1000:1000 app.txt ./\n"
                  "ADD bundle.tar /opt/\nLABEL stage=cli\nEXPOSE 8080\nSTOPSIGNAL SIGINT\n"
                  "HEALTHCHECK --interval=5s --retries=2 CMD [\"true\"]\n"
                  'CMD ["sh", "-c", "stat -c %u:%g app.txt; cat /opt/inner/f; pwd"]\n')
    ctx = _context(tmp_path, {"Dockerfile": dockerfile, "app.txt": "a\n",
                              ".dockerignore": "ignored\n", "ignored": "x\n"})
    with tarfile.open(os.path.join(ctx, "bundle.tar"), "w") as tar:
        data = b"from the archive\n"
        info = tarfile.TarInfo("inner/f")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tag = f"cli{engine.token}"
    try:
        out = engine.moor("build", "-t", tag, ctx, timeout=180).stdout
        assert f"Successfully tagged {tag}:latest" in out, out
        assert docker_api.docker("run", "--rm", tag).stdout == \
            "1000:1000\nfrom the archive\n/srv\n"
        quiet = engine.moor("build", "-q", "-t", tag, ctx).stdout.strip()
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", quiet), quiet
        labels = json.loads(docker_api.docker("image", "inspect", tag).stdout)[0]
        assert labels["Config"]["Labels"] == {"stage": "cli", "moorage.test": "bd"}
        stored = _stored_config(engine, docker_api, tag)
        assert stored["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 5_000_000_000,
                                         "Retries": 2}
        assert stored["ExposedPorts"] == {"8080/tcp": {}} and stored["StopSignal"] == "SIGINT"
    finally:
        docker_api.docker("rmi", "-f", tag, check=False)


def _post_build(dk: DockerApi, query: str, files: dict[str, str]) -> tuple[int, bytes]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    conn = UnixHTTPConnection(dk.socket, timeout=120)
    try:
        conn.request("POST", f"/v1.51/build?{query}", body=raw.getvalue(),
                     headers={"Content-Type": "application/x-tar"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_api_refusals_before_and_during_the_stream(dk: DockerApi, base: str) -> None:
    dockerfile = {"Dockerfile": f"FROM {base}\nCOPY missing.txt /\n"}
    cases = [("buildargs=%7Bnot", dockerfile, "error reading build args"),
             ("target=nope", dockerfile, 'target stage "nope" could not be found'),
             ("", {"other": "x"}, "Cannot locate specified Dockerfile: Dockerfile"),
             ("", {"Dockerfile": "FROM x\nBOGUS y\n"},
              "dockerfile parse error on line 2: unknown instruction: BOGUS")]
    for query, files, text in cases:
        status, body = _post_build(dk, query, files)
        assert status == 400 and json.loads(body)["message"].startswith(text), body
    # Once the steps stream, an error is the stream's last message (status 200).
    status, body = _post_build(dk, "", dockerfile)
    last = json.loads(body.splitlines()[-1])
    assert status == 200 and last["error"] == (
        "COPY failed: file not found in build context or excluded by .dockerignore: "
        "stat missing.txt: file does not exist"), last
    status, body = _post_build(dk, "", {"Dockerfile": "FROM nope-missing\n"})
    assert json.loads(body.splitlines()[-1])["error"].startswith(
        "No such image: nope-missing:latest"), body


def test_docker_py_builds(dk: DockerApi, base: str, engine: Engine, tmp_path: Path) -> None:
    docker = pytest.importorskip("docker")
    ctx = _context(tmp_path, {"Dockerfile": f"FROM {base}\nRUN echo py > /py\n"
                                            'CMD ["cat", "/py"]\n'})
    sdk = docker.DockerClient(base_url=f"unix://{dk.socket}", version="auto", timeout=120)
    tag = f"py{engine.token}"
    try:
        image, logs = sdk.images.build(path=ctx, tag=tag)
        assert any("Successfully built" in x.get("stream", "") for x in logs)
        assert image.id.startswith("sha256:") and f"{tag}:latest" in image.tags
        assert sdk.containers.run(tag, remove=True) == b"py\n"
        with pytest.raises(docker.errors.BuildError, match="returned a non-zero code: 3"):
            sdk.images.build(path=_context(tmp_path / "bad", {
                "Dockerfile": f"FROM {base}\nRUN exit 3\n"}), forcerm=True)
    finally:
        sdk.images.remove(tag, force=True)
        sdk.close()


def test_onbuild_triggers_run_in_the_child_build(dk: DockerApi, base: str, engine: Engine,
                                                 tmp_path: Path) -> None:
    parent, child = f"onb{engine.token}", f"onbchild{engine.token}"
    ctx = _context(tmp_path / "p", {"Dockerfile": f"FROM {base}\n"
                                                  "ONBUILD RUN echo triggered > /trig\n"})
    try:
        _build(dk, "-t", parent, ctx)
        assert _stored_config(engine, dk, parent)["OnBuild"] == ["RUN echo triggered > /trig"]
        out = _build(dk, "-t", child, _context(tmp_path / "c", {
            "Dockerfile": f'FROM {parent}\nCMD ["cat", "/trig"]\n'})).stdout
        assert "# Executing 1 build trigger" in out, out
        assert dk.docker("run", "--rm", child).stdout == "triggered\n"
        cfg = _stored_config(engine, dk, child)
        assert not cfg.get("OnBuild"), cfg  # triggers run once, not inherited
    finally:
        dk.docker("rmi", "-f", child, parent, check=False)
