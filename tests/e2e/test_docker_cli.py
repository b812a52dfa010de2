"""The real `docker` CLI drives moorage through its Engine API socket (`moor api`).

Each scenario is checked the way a user sees it: exit status, stdout, and for errors the
exact `Error response from daemon: ...` line Docker 28 prints. The session's engine
(tests/e2e/conftest.py) runs the reducer and worker; this module adds an API server on a
private socket and tracks every container a test created, so the engine fixture proves
each one left nothing behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Engine, free_port, http_get, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    cid_of,
    daemon_error,
    inspect,
    save_busybox,
    start_api,
    track_created,
)

pytestmark = pytest.mark.privileged


@pytest.fixture(scope="module")
def docker_api(moor_engine: Engine) -> Iterator[DockerApi]:
    yield from start_api(moor_engine, "docker-cli-api")


@pytest.fixture
def dk(engine: Engine, docker_api: DockerApi) -> Iterator[DockerApi]:
    """The module's API server; afterwards every container the test created is tracked,
    so the engine fixture force-removes it and proves it left nothing on the host."""
    yield from track_created(engine, docker_api)


@pytest.fixture(scope="module")
def image(docker_api: DockerApi) -> Iterator[tuple[str, str]]:
    """`docker load -i` a busybox archive; yield (tag, the load's stdout)."""
    tag = f"busybox:api{docker_api.engine.token}"
    tar = save_busybox(os.path.join(docker_api.engine.workdir, "cli-busybox.tar"), tag)
    out = docker_api.docker("load", "-i", tar).stdout
    yield tag, out


# --- system ----------------------------------------------------------------------------

def test_version_and_info_negotiate_api_1_51(dk: DockerApi) -> None:
    out = dk.docker("version").stdout
    assert "moorage" in out and "28.5.2" in out
    assert "1.51 (minimum version 1.24)" in out
    info = dk.docker("info", "--format", "{{json .}}").stdout
    doc = json.loads(info)
    assert doc["ServerVersion"] == "28.5.2" and doc["OSType"] == "linux"
    assert doc["Swarm"]["LocalNodeState"] == "inactive"

    status, headers, body = dk.http("HEAD", "/_ping")
    assert status == 200 and body == b"" and headers["Api-Version"] == "1.51"
    assert headers["Content-Length"] == "0"
    assert headers["Ostype"] == "linux" and headers["Docker-Experimental"] == "false"
    assert headers["Server"].startswith("Docker/28.5.2")
    assert dk.http("GET", "/v1.24/_ping")[:3:2] == (200, b"OK")
    status, headers, body = dk.http("GET", "/v1.52/version")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"message": "client version 1.52 is too new. Maximum "
                                           "supported API version is 1.51"}
    status, _, body = dk.http("GET", "/v1.23/version")
    assert status == 400 and json.loads(body)["message"] == (
        "client version 1.23 is too old. Minimum supported API version is 1.24, please "
        "upgrade your client to a newer version")
    status, _, body = dk.http("GET", "/v1.51/nothing/here")
    assert (status, json.loads(body)) == (404, {"message": "page not found"})


# --- images ----------------------------------------------------------------------------

def test_load_lists_and_removes_images(dk: DockerApi, image: tuple[str, str]) -> None:
    tag, loaded = image
    assert loaded == f"Loaded image: {tag}\n"
    repo, version = tag.split(":")
    listed = dk.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert tag in listed
    other = f"{repo}:rm{dk.engine.token}"
    tar = save_busybox(os.path.join(dk.engine.workdir, "cli-rmi.tar"), other, label="rmi")
    assert dk.docker("load", "-i", tar).stdout == f"Loaded image: {other}\n"
    image_id = json.loads(dk.docker("image", "inspect", other).stdout)[0]["Id"]
    out = dk.docker("rmi", other).stdout
    assert out == f"Untagged: {other}\nDeleted: {image_id}\n"
    done = dk.docker("rmi", other, check=False)
    assert done.returncode == 1
    assert daemon_error(done) == f"Error response from daemon: No such image: {other}"
    # A registry nobody serves (a closed loopback port): the pull fails on its /v2/ ping.
    done = dk.docker("pull", f"127.0.0.1:{free_port()}/alpine:3", check=False)
    assert done.returncode == 1 and "/v2/" in done.stderr, done.stderr


# --- lifecycle ---------------------------------------------------------------------------

def test_run_publish_inspect_ps_and_logs(dk: DockerApi, image: tuple[str, str]) -> None:
    tag, _ = image
    port = free_port()
    name = f"web{dk.engine.token}"
    cid = cid_of(dk.docker("run", "-d", "--name", name, "-p", f"{port}:80", tag,
                           "httpd", "-f", "-p", "80"))
    dk.engine.track(cid)
    dk.engine.note_pids(cid)
    assert http_get("127.0.0.1", port, "/etc/hostname") == (200, f"{cid[:12]}\n")
    assert http_get("127.0.0.1", port, "/missing")[0] == 404

    doc = inspect(dk, name)
    assert doc["Id"] == cid and doc["Name"] == f"/{name}"
    assert doc["State"]["Status"] == "running" and doc["State"]["Running"] is True
    assert doc["State"]["Pid"] > 0
    assert doc["NetworkSettings"]["IPAddress"].startswith(dk.engine.subnet.rsplit(".", 1)[0])
    assert doc["NetworkSettings"]["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0",
                                                           "HostPort": str(port)}]}
    rows = dk.docker("ps", "--format", "{{.Names}} {{.Status}} {{.Ports}}").stdout
    assert f"{name} Up " in rows and f"0.0.0.0:{port}->80/tcp" in rows

    logger = cid_of(dk.docker("run", "-d", tag, "sh", "-c",
                              "echo one; echo two >&2; sleep 0.2; echo three; sleep 60"))
    wait_for(lambda: "three" in dk.docker("logs", logger).stdout, 10, "the logs")
    done = dk.docker("logs", logger)
    assert (done.stdout, done.stderr) == ("one\nthree\n", "two\n")
    assert dk.docker("logs", "--tail", "1", logger).stdout == "three\n"
    stamped = dk.docker("logs", "-t", logger).stdout.splitlines()
    assert len(stamped) == 2 and stamped[0].endswith("Z one") and "T" in stamped[0]
    dk.docker("rm", "-f", name, logger)
    listed = dk.docker("ps", "-a", "--format", "{{.ID}}").stdout.split()
    assert cid[:12] not in listed and logger[:12] not in listed


def test_stop_start_restart_kill_wait_and_events(dk: DockerApi, image: tuple[str, str]) -> None:
    tag, _ = image
    name = f"svc{dk.engine.token}"
    since = time.time()
    script = 'trap "exit 0" TERM; echo started; while true; do sleep 0.1; done'
    cid = cid_of(dk.docker("run", "-d", "--name", name, tag, "sh", "-c", script))
    dk.docker("stop", name)
    state = inspect(dk, name)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    exited = dk.docker("ps", "-a", "--filter", "status=exited", "--format", "{{.Names}}")
    assert name in exited.stdout.split()
    assert name not in dk.docker("ps", "--format", "{{.Names}}").stdout.split()
    assert dk.docker("stop", name).stdout.strip() == name  # 304: still a success

    dk.docker("start", name)
    assert inspect(dk, name)["State"]["Status"] == "running"
    first = inspect(dk, name)["State"]["StartedAt"]
    dk.docker("restart", "-t", "5", name)
    state = inspect(dk, name)["State"]
    assert state["Status"] == "running" and state["StartedAt"] != first
    dk.docker("kill", "-s", "HUP", name)  # PID 1 without a HUP handler ignores it
    time.sleep(0.3)
    assert inspect(dk, name)["State"]["Status"] == "running"
    dk.docker("kill", name)
    assert inspect(dk, name)["State"]["ExitCode"] == 137
    assert dk.docker("wait", name).stdout.strip() == "137"
    assert dk.docker("logs", name).stdout == "started\n" * 3

    quick = cid_of(dk.docker("run", "-d", tag, "sh", "-c", "sleep 0.5; exit 7"))
    assert dk.docker("wait", quick).stdout.strip() == "7"
    dk.docker("rm", name, quick)
    until = time.time() + 1

    out = dk.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
                    "--filter", f"container={cid}", "--format", "{{json .}}").stdout
    events = [json.loads(line) for line in out.splitlines()]
    actions = [ev["Action"] for ev in events]
    assert actions == ["create", "start", "kill", "die", "stop", "start", "kill", "die",
                       "stop", "start", "restart", "kill", "kill", "die", "destroy"], actions
    signals = [ev["Actor"]["Attributes"].get("signal") for ev in events if ev["Action"] == "kill"]
    assert signals == ["15", "15", "1", "9"]
    assert {ev["Actor"]["Attributes"]["name"] for ev in events} == {name}
    out = dk.docker("events", "--since", f"{since:.3f}", "--until", f"{until:.3f}",
                    "--filter", "event=die", "--filter", "type=container",
                    "--format", "{{.Actor.ID}} {{.Actor.Attributes.exitCode}}").stdout
    assert out.splitlines() == [f"{cid} 0", f"{cid} 0", f"{cid} 137", f"{quick} 7"]


def test_rm_force_and_run_rm(dk: DockerApi, image: tuple[str, str]) -> None:
    tag, _ = image
    name = f"busy{dk.engine.token}"
    cid = cid_of(dk.docker("run", "-d", "--name", name, tag, "sleep", "60"))
    dk.engine.note_pids(cid)
    done = dk.docker("rm", name, check=False)
    assert done.returncode == 1
    assert daemon_error(done) == (
        f'Error response from daemon: cannot remove container "{name}": container is '
        "running: stop the container before removing or force remove")
    assert dk.docker("rm", "-f", name).stdout.strip() == name
    assert dk.engine.container(cid) is None

    done = dk.docker("run", "--rm", tag, "sh", "-c", "echo out; echo err >&2")
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")
    done = dk.docker("run", "--rm", tag, "sh", "-c", "exit 3", check=False)
    assert done.returncode == 3
    ran = dk.docker("run", "--rm", "-d", tag, "sh", "-c", "sleep 0.3")
    gone = cid_of(ran)
    wait_for(lambda: dk.engine.container(gone) is None, 15, "AutoRemove to remove it")
    assert dk.docker("ps", "-a", "-q").stdout.split() == []


def test_rename(dk: DockerApi, image: tuple[str, str]) -> None:
    tag, _ = image
    old, new = f"old{dk.engine.token}", f"new{dk.engine.token}"
    cid = cid_of(dk.docker("create", "--name", old, tag, "true"))
    dk.docker("rename", old, new)
    assert inspect(dk, cid)["Name"] == f"/{new}"
    done = dk.docker("rename", new, new, check=False)
    assert done.returncode == 1 and daemon_error(done) == (
        "Error response from daemon: Renaming a container with the same name as its "
        "current name")
    dk.docker("rm", new)


def test_errors_are_dockers(dk: DockerApi, image: tuple[str, str]) -> None:
    tag, _ = image
    name = f"taken{dk.engine.token}"
    cid = cid_of(dk.docker("create", "--name", name, tag, "true"))
    done = dk.docker("run", "-d", "--name", name, tag, "true", check=False)
    assert done.returncode == 125
    assert daemon_error(done) == (
        f'docker: Error response from daemon: Conflict. The container name "/{name}" is '
        f'already in use by container "{cid}". You have to remove (or rename) that container '
        "to be able to reuse that name.")

    missing = f"nosuch{dk.engine.token}"
    done = dk.docker("start", missing, check=False)
    assert done.returncode == 1
    assert daemon_error(done) == f"Error response from daemon: No such container: {missing}"

    done = dk.docker("run", "-d", "--name", "a", tag, "true", check=False)
    assert done.returncode == 125
    assert daemon_error(done) == ("docker: Error response from daemon: Invalid container name "
                                  "(a), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")

    done = dk.docker("run", "-d", "--restart", "sometimes", tag, "true", check=False)
    assert done.returncode == 125
    assert daemon_error(done) == (
        "docker: Error response from daemon: invalid restart policy: unknown policy "
        "'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'")

    done = dk.docker("run", "-d", "--oom-score-adj", "500", tag, "true", check=False)
    assert done.returncode == 125 and "HostConfig.OomScoreAdj" in daemon_error(done)
    dk.docker("rm", name)


def test_capabilities_and_security_opt(dk: DockerApi, image: tuple[str, str]) -> None:
    tag, _ = image
    done = dk.docker("run", "-d", "--cap-add", "foo", tag, "true", check=False)
    assert done.returncode == 125
    assert daemon_error(done) == ('docker: Error response from daemon: invalid CapAdd: '
                                  'unknown capability: "CAP_FOO"')
    done = dk.docker("run", "-d", "--security-opt", "no-new-privileges=maybe", tag, "true",
                     check=False)
    assert done.returncode == 125
    assert daemon_error(done) == ('docker: Error response from daemon: invalid --security-opt '
                                  '2: "no-new-privileges=maybe"')
    cid = cid_of(dk.docker("run", "-d", "--cap-drop", "ALL", "--cap-add", "net_bind_service",
                           "--security-opt", "no-new-privileges", tag, "sleep", "60"))
    host = inspect(dk, cid)["HostConfig"]
    assert (host["CapAdd"], host["CapDrop"], host["SecurityOpt"]) == (
        ["CAP_NET_BIND_SERVICE"], ["ALL"], ["no-new-privileges"])
    pid = inspect(dk, cid)["State"]["Pid"]
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        got = dict(line.split(":", 1) for line in f)
    assert (got["CapEff"].strip(), got["NoNewPrivs"].strip()) == ("0000000000000400", "1")
    dk.docker("rm", "-f", cid)


def test_host_sharing_options_through_the_docker_cli(dk: DockerApi,
                                                    image: tuple[str, str]) -> None:
    tag, _ = image
    for flags, text in (
        (("--ipc", "public"), "invalid IPC mode: public"),
        (("--runtime", "kata"), "Unknown runtime specified kata"),
        (("--uts", "host", "--hostname", "box"), "conflicting options: hostname and the UTS mode"),
    ):
        done = dk.docker("run", "-d", *flags, tag, "true", check=False)
        assert done.returncode == 125, flags
        assert daemon_error(done) == f"docker: Error response from daemon: {text}"
    cid = cid_of(dk.docker("run", "-d", "--privileged", "--init", "--ipc", "shareable",
                           "--tmpfs", "/run:size=1m", "--sysctl", "net.ipv4.tcp_syncookies=0",
                           "--group-add", "4242", tag, "sleep", "60"))
    host = inspect(dk, cid)["HostConfig"]
    assert (host["Privileged"], host["Init"], host["IpcMode"], host["Tmpfs"], host["Sysctls"],
            host["GroupAdd"], host["Runtime"]) == (
        True, True, "shareable", {"/run": "size=1m"}, {"net.ipv4.tcp_syncookies": "0"},
        ["4242"], "runc")
    pid = inspect(dk, cid)["State"]["Pid"]
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().startswith(b"/sbin/docker-init\0--\0sleep")
    dk.docker("rm", "-f", cid)


def test_exec_pause_and_unpause(dk: DockerApi, image: tuple[str, str]) -> None:
    tag, _ = image
    cid = cid_of(dk.docker("run", "-d", "-e", "WHO=ctr", tag, "sleep", "60"))
    done = dk.docker("exec", cid, "sh", "-c", "echo $WHO; echo err >&2; exit 5", check=False)
    assert (done.returncode, done.stdout, done.stderr) == (5, "ctr\n", "err\n")
    done = subprocess.run(["docker", "exec", "-i", cid, "tr", "a-z", "A-Z"], input="abc\n",
                          env=dk.docker_env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "ABC\n"), done.stderr
    # -t needs a terminal on the CLI's side: script(1) gives it one.
    done = subprocess.run(["script", "-qec", f"docker exec -t {cid} sh -c 'tty; stty size'",
                           "/dev/null"], env={**dk.docker_env, "COLUMNS": "91", "LINES": "27"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "/dev/pts/" in done.stdout, done
    dk.docker("exec", "-d", cid, "touch", "/tmp/detached")
    dk.docker("pause", cid)
    assert inspect(dk, cid)["State"]["Status"] == "paused"
    done = dk.docker("exec", cid, "true", check=False)
    assert daemon_error(done) == (f"Error response from daemon: Container {cid} is paused, "
                                  "unpause the container before exec")
    done = dk.docker("pause", cid, check=False)
    assert daemon_error(done) == (f"Error response from daemon: Container {cid} is already "
                                  "paused")
    dk.docker("unpause", cid)
    assert inspect(dk, cid)["State"]["Status"] == "running"
    assert dk.docker("exec", cid, "ls", "/tmp/detached").stdout == "/tmp/detached\n"
    time.sleep(1.1)  # the CLI sends --until in whole seconds: let this one pass
    events = dk.docker("events", "--since", "1h", "--until", "0s", "--filter", f"container={cid}",
                       "--format", "{{.Action}}").stdout.splitlines()
    assert "exec_create: sh -c echo $WHO; echo err >&2; exit 5" in events
    assert "exec_die" in events and "pause" in events and "unpause" in events, events
    dk.docker("rm", "-f", cid)


def test_server_stops_cleanly_on_sigterm(moor_engine: Engine) -> None:
    api = start_api(moor_engine, "docker-cli-sigterm", need_cli=False)
    server = next(api)
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=15)
    with pytest.raises(StopIteration):
        next(api)  # the fixture's checks: exit 0 and the socket removed
