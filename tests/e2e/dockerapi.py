"""The `moor api` server the e2e modules drive with the docker CLI and docker-py.

One home for what every such module needs: starting a private API server for the module
(`start_api`), tracking each container a test created (`track_created`), loading a busybox
image (`load_busybox`), and reading the CLI's answers (`cid_of`, `inspect`, `daemon_error`).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from events import model as e
from tests.conftest import missing_capability
from tests.e2e.conftest import REPO, Engine, stop_process, wait_for
from tests.imagebuild import SavedImage, busybox_rootfs_entries, docker_save_tar, layer_tar

T = TypeVar("T")


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the raw checks of headers and status codes)."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


@dataclass
class DockerApi:
    """A `moor api` server of this test module, and ways to talk to it."""

    engine: Engine
    socket: str
    proc: subprocess.Popen[bytes]
    log: str
    docker_env: dict[str, str]

    def docker(self, *args: str, check: bool = True, timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this server; with check, fail on a non-zero exit."""
        done = subprocess.run(["docker", *args], env=self.docker_env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}\n"
                                 f"stdout: {done.stdout}\nstderr: {done.stderr}\n"
                                 f"{self.log_tail()}")
        return done

    def http(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = UnixHTTPConnection(self.socket)
        try:
            data = json.dumps(body).encode() if body is not None else None
            hdrs = dict(headers or {})
            if data is not None:
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = Path(self.log).read_text(errors="replace")
        except OSError:
            return "(api log unreadable)"
        return "--- api.log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def start_api(engine: Engine, name: str, need_cli: bool = True) -> Iterator[DockerApi]:
    """Start `python -m moor.cli api` on a private socket; stop it by PID afterwards."""
    if need_cli and shutil.which("docker") is None:
        missing_capability("the docker CLI on PATH (Debian: apt-get install docker.io)")
    sock = os.path.join(engine.workdir, f"{name}.sock")
    log = os.path.join(engine.workdir, f"{name}.log")
    # The prefix goes as a flag: the engine fixture counts every process whose environment
    # carries MOOR_PREFIX, other than the reducer and the worker, as a stray supervisor.
    env = {k: v for k, v in engine.env.items() if k != "MOOR_PREFIX"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moor.cli", "api", "--socket", sock,
                                 "--prefix", engine.env["MOOR_PREFIX"]],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    config = tempfile.mkdtemp(prefix="docker-config-", dir=engine.workdir)
    cli_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": config,
               "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": config}
    api = DockerApi(engine, sock, proc, log, cli_env)

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"moor api exited {proc.returncode}\n{api.log_tail()}")
        try:
            return api.http("GET", "/_ping")[0] == 200
        except OSError:
            return False

    wait_for(answers, 30, "the API server to answer /_ping", api.log_tail)
    try:
        yield api
    finally:
        stop_process(proc)
        assert proc.returncode == 0, f"moor api exited {proc.returncode}\n{api.log_tail()}"
        assert not os.path.exists(sock), "the API server left its socket behind"

def track_created(engine: Engine, handle: T) -> Iterator[T]:
    """Yield the module's API server (or its client); afterwards every container the test
    created is tracked, so the engine fixture force-removes it and proves it left nothing."""
    cursor = engine.last_event_id()
    yield handle
    for stream_id, record in engine.events():
        if stream_id > cursor and isinstance(record.event, e.ContainerCreated):
            engine.track(record.meta.container_id)


def save_busybox(path: str, tag: str, label: str = "") -> str:
    """Write a `docker save` archive of a busybox image (a label makes a distinct id)."""
    layer = layer_tar(busybox_rootfs_entries())
    image = SavedImage(layers=[layer], tags=[tag], labels={"moorage.test": label} if label
                       else None)
    return docker_save_tar(path, [image])

def load_busybox(api: DockerApi, short: str) -> str:
    """`docker load -i` a busybox archive labelled `short`; return its tag."""
    name = f"busybox:{short}{api.engine.token}"
    api.docker("load", "-i", save_busybox(
        os.path.join(api.engine.workdir, f"{short}.tar"), name, label=short))
    return name


def cid_of(done: subprocess.CompletedProcess[str]) -> str:
    cid = done.stdout.strip().splitlines()[-1]
    assert len(cid) == 64, done.stdout
    return cid


def inspect(api: DockerApi, ref: str) -> dict[str, Any]:
    return json.loads(api.docker("inspect", ref).stdout)[0]


def daemon_error(done: subprocess.CompletedProcess[str]) -> str:
    """Return the `Error response from daemon:` line of a failed command's stderr."""
    for line in done.stderr.splitlines():
        if "Error response from daemon: " in line:
            return line
    raise AssertionError(f"no daemon error in stderr: {done.stderr!r}")


def api_fixtures(name: str, short: str, image: str = "tag") -> tuple[Any, Any, Any]:
    """The fixtures of a module that drives its own API server, to assign at module level:
    `docker_api` (the server, per module), `dk` (it, per test, removing the containers the
    test created) and the busybox image loaded into it, named `image`."""

    @pytest.fixture(scope="module", name="docker_api")
    def _api(moor_engine: Engine) -> Iterator[DockerApi]:
        yield from start_api(moor_engine, name)

    @pytest.fixture(name="dk")
    def _dk(engine: Engine, docker_api: DockerApi) -> Iterator[DockerApi]:
        yield from track_created(engine, docker_api)

    @pytest.fixture(scope="module", name=image)
    def _image(docker_api: DockerApi) -> str:
        return load_busybox(docker_api, short)

    return _api, _dk, _image
