"""docker-py (the `docker` package) drives moorage through its Engine API socket.

The same scenarios as test_docker_cli.py, through the SDK's objects and its typed
errors (status code and Docker's explanation text), plus the wire-level promise
`docker run` depends on: `wait` answers with its headers before the container starts.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Engine, free_port, http_get, wait_for
from tests.e2e.dockerapi import DockerApi, save_busybox, start_api, track_created

docker = pytest.importorskip("docker")

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def py_api(moor_engine: Engine) -> Iterator[DockerApi]:
    yield from start_api(moor_engine, "docker-py-api", need_cli=False)


@pytest.fixture(scope="module")
def client(py_api: DockerApi) -> Iterator[Any]:
    sdk = docker.DockerClient(base_url=f"unix://{py_api.socket}", version="auto", timeout=60)
    yield sdk
    sdk.close()


@pytest.fixture(scope="module")
def image(py_api: DockerApi, client: Any) -> str:
    tag = f"busybox:py{py_api.engine.token}"
    tar = save_busybox(os.path.join(py_api.engine.workdir, "py-busybox.tar"), tag, label="py")
    with open(tar, "rb") as f:
        loaded = client.images.load(f.read())
    assert [img.tags for img in loaded] == [[tag]]
    return tag


@pytest.fixture
def sdk(engine: Engine, py_api: DockerApi, client: Any) -> Iterator[Any]:
    """The module's SDK client; every container the test created is tracked afterwards."""
    yield from track_created(engine, client)


def test_ping_version_info(sdk: Any) -> None:
    assert sdk.ping() is True
    version = sdk.version()
    assert version["ApiVersion"] == "1.51" and version["MinAPIVersion"] == "1.24"
    assert any(c["Name"] == "moorage" for c in version["Components"])
    assert sdk.api.api_version == "1.51"
    info = sdk.info()
    assert info["ServerVersion"] == "28.5.2" and info["OSType"] == "linux"


def test_images_list_inspect_remove(sdk: Any, image: str, py_api: DockerApi) -> None:
    assert image in [t for img in sdk.images.list() for t in img.tags]
    assert sdk.images.get(image).tags == [image]
    other = image.replace(":py", ":pyrm")
    tar = save_busybox(os.path.join(py_api.engine.workdir, "py-rm.tar"), other, label="pyrm")
    with open(tar, "rb") as f:
        (loaded,) = sdk.images.load(f.read())
    result = sdk.api.remove_image(other)
    assert result == [{"Untagged": other}, {"Deleted": loaded.id}]
    with pytest.raises(docker.errors.ImageNotFound) as err:
        sdk.images.get(other)
    assert err.value.explanation == f"No such image: {other}"
    with pytest.raises(docker.errors.APIError) as err:
        sdk.images.pull(f"127.0.0.1:{free_port()}/alpine", tag="3")  # nobody serves it
    assert err.value.status_code == 500 and "/v2/" in err.value.explanation


def test_run_publish_inspect_list_logs(sdk: Any, image: str, engine: Engine) -> None:
    port = free_port()
    name = f"pyweb{engine.token}"
    web = sdk.containers.run(image, ["httpd", "-f", "-p", "80"], detach=True, name=name,
                             ports={"80/tcp": port})
    engine.track(web.id)
    engine.note_pids(web.id)
    assert http_get("127.0.0.1", port, "/etc/hostname") == (200, f"{web.id[:12]}\n")
    assert http_get("127.0.0.1", port, "/missing")[0] == 404
    web.reload()
    assert web.status == "running" and web.name == name
    assert web.attrs["NetworkSettings"]["IPAddress"]
    assert web.ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    assert [c.id for c in sdk.containers.list(filters={"name": name})] == [web.id]

    logger = sdk.containers.run(image, ["sh", "-c", "echo a; sleep 0.2; echo b >&2; sleep 60"],
                                detach=True)
    wait_for(lambda: b"b\n" in logger.logs(), 10, "the logs")
    assert logger.logs(stdout=True, stderr=False) == b"a\n"
    assert logger.logs(stdout=False, stderr=True) == b"b\n"
    assert logger.logs(tail=1) == b"b\n"
    follower = sdk.containers.run(image, ["sh", "-c", "echo x; sleep 0.5; echo y"],
                                  detach=True)
    assert follower.logs(follow=True) == b"x\ny\n"  # follows until the process exits
    follower.remove()
    out = sdk.containers.run(image, ["sh", "-c", "echo hello"], remove=True)
    assert out == b"hello\n"
    web.remove(force=True)
    logger.remove(force=True)


def test_lifecycle_wait_and_events(sdk: Any, image: str, engine: Engine) -> None:
    since = time.time()
    script = 'trap "exit 0" TERM; echo up; while true; do sleep 0.1; done'
    ctr = sdk.containers.run(image, ["sh", "-c", script], detach=True,
                             name=f"pysvc{engine.token}")
    ctr.stop(timeout=5)
    ctr.reload()
    assert (ctr.status, ctr.attrs["State"]["ExitCode"]) == ("exited", 0)
    assert ctr.id in [c.id for c in sdk.containers.list(all=True,
                                                         filters={"status": "exited"})]
    ctr.stop()  # 304 from the server: the SDK treats it as done
    ctr.start()
    ctr.restart(timeout=5)
    ctr.kill(signal="SIGHUP")
    time.sleep(0.3)
    ctr.reload()
    assert ctr.status == "running"
    ctr.kill()
    assert ctr.wait() == {"StatusCode": 137}
    renamed = f"pyrenamed{engine.token}"
    ctr.rename(renamed)
    ctr.reload()
    assert ctr.name == renamed
    ctr.remove()

    short = sdk.containers.run(image, ["sh", "-c", "sleep 0.5; exit 5"], detach=True,
                               auto_remove=True)
    assert short.wait(condition="removed") == {"StatusCode": 5}
    until = time.time() + 1
    seen = [(ev["Action"], ev["Actor"]["Attributes"].get("name"))
            for ev in sdk.events(since=since, until=until, decode=True,
                                 filters={"container": ctr.id})]
    assert [a for a, _ in seen] == ["create", "start", "kill", "die", "stop", "start",
                                    "kill", "die", "stop", "start", "restart", "kill", "kill",
                                    "die", "rename", "destroy"], seen
    assert seen[-1] == ("destroy", renamed)


def test_errors_are_typed_with_dockers_texts(sdk: Any, image: str, engine: Engine) -> None:
    name = f"pytaken{engine.token}"
    first = sdk.containers.create(image, ["sleep", "60"], name=name)
    with pytest.raises(docker.errors.APIError) as err:
        sdk.containers.create(image, ["true"], name=name)
    assert err.value.status_code == 409
    assert err.value.explanation == (
        f'Conflict. The container name "/{name}" is already in use by container '
        f'"{first.id}". You have to remove (or rename) that container to be able to reuse '
        "that name.")
    first.start()
    with pytest.raises(docker.errors.APIError) as err:
        first.remove()
    assert err.value.status_code == 409 and err.value.explanation == (
        f'cannot remove container "{first.id}": container is running: stop the container '
        "before removing or force remove")
    with pytest.raises(docker.errors.NotFound) as err:
        sdk.api.start(f"nosuch{engine.token}")
    assert err.value.explanation == f"No such container: nosuch{engine.token}"
    with pytest.raises(docker.errors.APIError) as err:
        sdk.containers.create(image, ["true"], name="a")
    assert err.value.status_code == 400 and err.value.explanation == (
        "Invalid container name (a), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    with pytest.raises(docker.errors.APIError) as err:
        sdk.containers.create(image, ["true"], restart_policy={"Name": "sometimes"})
    assert err.value.status_code == 400 and err.value.explanation == (
        "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', "
        "'on-failure', or 'unless-stopped'")
    with pytest.raises(docker.errors.APIError) as err:
        sdk.containers.create(image, ["true"], volumes=["/tmp:/tmp:bogus"])
    assert err.value.status_code == 400 and err.value.explanation == "invalid mode: bogus"
    with pytest.raises(docker.errors.APIError) as err:
        sdk.containers.create(image, ["true"], storage_opt={"size": "1G"})
    assert err.value.status_code == 400
    assert err.value.explanation.startswith("moorage does not support the container setting ")
    first.remove(force=True)


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def test_wait_answers_headers_before_start(sdk: Any, image: str, py_api: DockerApi) -> None:
    ctr = sdk.containers.create(image, ["sh", "-c", "exit 4"])
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(py_api.socket)
        s.sendall(f"POST /v1.51/containers/{ctr.id}/wait?condition=next-exit HTTP/1.1\r\n"
                  "Host: docker\r\nContent-Length: 0\r\n\r\n".encode())
        head = _read_head(s)  # before start: the headers alone
        assert head.startswith(b"HTTP/1.1 200 ") and b"Api-Version: 1.51" in head
        result: dict[str, Any] = {}
        reader = threading.Thread(target=lambda: result.update(body=s.recv(4096)))
        reader.start()
        time.sleep(0.2)
        assert "body" not in result
        ctr.start()
        reader.join(10)
        assert b'{"StatusCode":4}\n' in result["body"], result  # one chunk
    ctr.remove()
    status, _, payload = py_api.http("POST", f"/containers/{ctr.id}/wait")
    assert (status, json.loads(payload)) == (404, {"message": f"No such container: {ctr.id}"})
    status, _, payload = py_api.http("POST", f"/containers/{ctr.id}/wait?condition=bogus")
    assert (status, json.loads(payload)) == (400, {"message": 'invalid condition: "bogus"'})


def test_exec_run_and_pause(sdk: Any, image: str, engine: Engine) -> None:
    ctr = sdk.containers.run(image, ["sleep", "60"], detach=True)
    try:
        result = ctr.exec_run(["sh", "-c", "echo out; echo err >&2; exit 3"], demux=True)
        assert result.exit_code == 3 and result.output == (b"out\n", b"err\n")
        assert ctr.exec_run("hostname", tty=True).output.strip() == ctr.id[:12].encode()
        exec_id = sdk.api.exec_create(ctr.id, ["true"])["Id"]
        sdk.api.exec_start(exec_id)
        info = sdk.api.exec_inspect(exec_id)
        assert (info["ExitCode"], info["Running"], info["ContainerID"]) == (0, False, ctr.id)
        assert info["ProcessConfig"]["entrypoint"] == "true"
        ctr.pause()
        ctr.reload()
        assert ctr.status == "paused"
        ctr.unpause()
        ctr.reload()
        assert ctr.status == "running"
        with pytest.raises(docker.errors.NotFound, match="No such exec instance"):
            sdk.api.exec_inspect("f" * 64)
    finally:
        ctr.remove(force=True)
