"""`moor up` with its ACL users (issue 9, section 4), end to end as root: a real container
still runs and stops while every program speaks to Redis as its own role.

The test runs the real `moor up` on a private data root (its own embedded Redis on a unix
socket, a unique key prefix, bridge, subnet and cgroup parent), drives it with the `moor`
CLI (root: the control credential) and the Docker API socket, and checks from outside:
the default user is off, each role's credential is refused what it must not do, the
journal names the principal of every fact beside the declared actor, and the API socket
has the group `--group` gave it. Teardown stops `moor up` by PID and releases the bridge,
chains and cgroup parent, then proves nothing is left.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from engine.acl import read_credential
from engine.keys import Keys, keys_for
from tests.e2e.conftest import REPO, pick_subnet, require_busybox, wait_for
from tests.imagebuild import busybox_rootfs_tar

pytestmark = pytest.mark.privileged
GID = 4242  # a gid no group needs to name: the socket only records it


@dataclass
class Up:
    """A running `moor up` on a private data root."""

    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    root: str
    work: str
    keys: Keys

    def log(self) -> str:
        return Path(self.work, "up.log").read_text(errors="replace")

    def moor(self, *args: str, **env: str) -> str:
        done = subprocess.run([sys.executable, "-m", "moor.cli", *args], cwd=REPO,
                              env={**self.env, **env}, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"moor {' '.join(args)}: {done.stderr}"
        return done.stdout

    def as_(self, role: str) -> Any:
        user, password = read_credential(os.path.join(self.root, "credentials", role))
        return redis.Redis(unix_socket_path=os.path.join(self.root, "redis", "redis.sock"),
                           username=user, password=password)


@pytest.fixture
def up(privileged: None) -> Iterator[Up]:
    require_busybox()
    from workers.net import network, portmap
    from workers.net.netconf import BridgeConfig
    from workers.proc import cgroups

    token = secrets.token_hex(3)
    work = tempfile.mkdtemp(prefix=f"moor-acl-up-{token}-")
    root = os.path.join(work, "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOR_")}
    env.update(MOOR_DATA_ROOT=root, MOOR_PREFIX=f"mooracl{token}", MOOR_SUBNET=pick_subnet(token),
               MOOR_BRIDGE=f"mooracl{token}", MOOR_CGROUP_PARENT=f"mooracl{token}",
               MOOR_ENGINE_ID=f"a{token}", PYTHONUNBUFFERED="1", USER="tester")
    with open(os.path.join(work, "up.log"), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moor.cli", "up", "--group", str(GID)],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    handle = Up(proc, env, root, work, keys_for(prefix=env["MOOR_PREFIX"]))
    try:
        wait_for(lambda: proc.poll() is None and "moor api: listening" in handle.log(), 60,
                 "moor up to start", handle.log)
        yield handle
    finally:
        try:
            for cid in handle.moor("ps", "-aq").split():
                handle.moor("rm", "-f", cid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            cfg = BridgeConfig(name=env["MOOR_BRIDGE"], subnet=env["MOOR_SUBNET"])
            portmap.release_chains(cfg, env["MOOR_ENGINE_ID"])
            network.release_bridge(cfg)
            cgroups.release_parent(env["MOOR_CGROUP_PARENT"])
            leaks = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                     if os.path.realpath(root) in line]
            leaks += [n for n in os.listdir("/run/netns") if env["MOOR_ENGINE_ID"] in n] \
                if os.path.isdir("/run/netns") else []
            leaks += [line for line in subprocess.run(["iptables-save"], capture_output=True,
                                                      text=True, check=True).stdout.splitlines()
                      if env["MOOR_ENGINE_ID"] in line]
            leaks += [str(d) for d in (*Path("/sys/fs/cgroup").glob(env["MOOR_CGROUP_PARENT"]),
                                       *Path("/sys/fs/cgroup").glob(
                                           f"*/{env['MOOR_CGROUP_PARENT']}"))]
            leaks += [f"bridge {env['MOOR_BRIDGE']}"] \
                if Path("/sys/class/net", env["MOOR_BRIDGE"]).exists() else []
            shutil.rmtree(work)
            assert not leaks, leaks


def _journal(up: Up) -> list[dict[str, Any]]:
    return [json.loads(line) for line in up.moor("replay", "--format", "json").splitlines()]


def _api(path: str, sock: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    class Unix(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(sock)

    conn = Unix("localhost", timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read() or b"{}")
    finally:
        conn.close()


def test_moor_up_with_acl_users_runs_and_stops_a_container(up: Up) -> None:
    k = up.keys
    assert re.search(r"ACL users per role in .*users\.acl \(default user off", up.log())
    # The default user is off; each program's credential is refused what it must not do.
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(unix_socket_path=os.path.join(up.root, "redis", "redis.sock")).ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        up.as_("control").xadd(k.events, {"d": b"forged"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        up.as_("control").xadd(k.reports, {"env": b"", "cmd": b""})
    with pytest.raises(redis.exceptions.NoPermissionError):
        up.as_("worker").xadd(k.commands, {"env": b"", "cmd": b""})
    admin = up.as_("admin")
    admin.execute_command("ACL", "LOG", "RESET")  # the refusals above; none from here on
    for name in ("admin", "reducer", "worker", "control"):
        assert stat.S_IMODE(os.stat(os.path.join(up.root, "credentials", name)).st_mode) \
            == 0o600
    # The API socket: 0660, the group --group named.
    sock = os.path.join(up.root, "docker.sock")
    st = os.stat(sock)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == GID

    # A real container through the CLI (the control credential): runs, then stops.
    tar = busybox_rootfs_tar(os.path.join(up.work, "busybox.tar"))
    up.moor("image", "import", tar, "busybox")
    cid = up.moor("--actor", "alice", "run", "-d", "--name", "web", "busybox", "sleep",
                  "300").split()[-1]
    doc = json.loads(up.moor("inspect", cid))[0]
    assert doc["State"]["Running"] and doc["State"]["Pid"] > 0
    pid = doc["State"]["Pid"]
    assert Path(f"/proc/{pid}").exists()
    up.moor("stop", "-t", "1", "web")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 10, "the container process to end")
    assert json.loads(up.moor("inspect", cid))[0]["State"]["Status"] == "exited"

    # Through the API: the actor keeps the peer's credentials and adds its user name.
    status, created = _api("/containers/create?name=api1", sock,
                           {"Image": "busybox", "Cmd": ["true"]})
    assert status == 201, created
    up.moor("rm", "web", "api1")

    journal = _journal(up)
    mine = [row for row in journal if row["container_id"] == cid]
    by_type = {row["event_type"]: row for row in mine}
    assert by_type["ContainerCreated"]["principal"] == "control"
    assert by_type["ContainerCreated"]["actor"] == "alice"
    assert by_type["ContainerStarted"]["principal"] == "worker"  # the worker's report
    assert by_type["ContainerDied"]["principal"] == "worker"  # the supervisor's exit
    assert by_type["ContainerDied"]["actor"].startswith("supervisor@")
    api = next(row for row in journal if row["event_type"] == "ContainerCreated"
               and row["container_id"] == created["Id"])
    assert re.fullmatch(rf"docker-api uid=0 pid={os.getpid()} user=root", api["actor"])
    assert api["principal"] == "control"
    done = subprocess.run([sys.executable, "-m", "moor.cli", "replay", "--verify"], cwd=REPO,
                          env=up.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # No program was refused anything on the way (rq included: it logs and goes on).
    assert admin.execute_command("ACL", "LOG") == []
