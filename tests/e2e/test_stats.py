"""Stats and top of real containers, through the docker CLI and through `moor`.

A busy loop shows about one core, a 50 MiB allocation shows in memory usage, `-m 64m`
shows the 64 MiB limit, traffic to a published port shows in NET I/O, `docker top` and
`moor top` list the processes, a stopped container gets zeroed stats and Docker's 409
for top, and removing a container ends its stats stream (the collector's StopCollection).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import REPO, Engine, free_port, http_get, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    UnixHTTPConnection,
    cid_of,
    daemon_error,
    start_api,
    track_created,
)

pytestmark = pytest.mark.privileged

HEADER = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O",
          "BLOCK I/O", "PIDS"]
BUSY = "while :; do :; done"
# awk keeps a 50 MiB string in its heap (anonymous memory, never page cache) while it
# waits for the sleep.
ALLOC = ('awk \'BEGIN { s = sprintf("%52428800s", ""); print "ready"; fflush(); '
         'system("sleep 600") }\'')
_UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 1 << 20,
          "GiB": 1 << 30}


@pytest.fixture(scope="module")
def docker_api(moor_engine: Engine) -> Iterator[DockerApi]:
    yield from start_api(moor_engine, "stats-api")


@pytest.fixture
def dk(engine: Engine, docker_api: DockerApi) -> Iterator[DockerApi]:
    """The module's API server; every container a test created is tracked for the leak
    checks of the engine fixture."""
    yield from track_created(engine, docker_api)


def table(out: str) -> dict[str, dict[str, str]]:
    """Parse a `docker stats` / `moor stats` table into {name: {column: cell}}."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert re.split(r"\s{2,}", lines[0].strip()) == HEADER, lines[0]
    rows = {}
    for line in lines[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(HEADER), line
        rows[cells[1]] = dict(zip(HEADER, cells, strict=True))
    return rows


def size(text: str) -> float:
    """Return the bytes of a go-units size ("64MiB", "1.5kB", "0B")."""
    number, unit = re.fullmatch(r"([0-9.e+]+)([A-Za-z]+)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def percent(text: str) -> float:
    return float(text.rstrip("%"))


def wait_logs(dk: DockerApi, name: str, text: str) -> None:
    wait_for(lambda: text in dk.docker("logs", name).stdout, 30, f"{name} to log {text!r}")


def test_docker_stats_shows_cpu_memory_limit_and_pids(dk: DockerApi) -> None:
    token = dk.engine.token
    busy, mem = f"busy{token}", f"mem{token}"
    busy_id = cid_of(dk.docker("run", "-d", "--name", busy, "-m", "64m", "busybox", "sh",
                               "-c", BUSY))
    cid_of(dk.docker("run", "-d", "--name", mem, "busybox", "sh", "-c", ALLOC))
    wait_logs(dk, mem, "ready")
    rows = table(dk.docker("stats", "--no-stream", busy, mem).stdout)
    row = rows[busy]
    assert row["CONTAINER ID"] == busy_id[:12]
    assert percent(row["CPU %"]) > 50, row  # a busy loop: about one core (100%)
    used, limit = row["MEM USAGE / LIMIT"].split(" / ")
    assert limit == "64MiB" and 0 < size(used) < 64 << 20, row
    assert percent(row["MEM %"]) == pytest.approx(size(used) / (64 << 20) * 100, abs=0.5)
    assert int(row["PIDS"]) >= 1
    used, limit = rows[mem]["MEM USAGE / LIMIT"].split(" / ")
    assert size(used) >= 50 << 20, rows[mem]  # the 50 MiB string
    assert size(limit) > 64 << 20  # no limit: the host's memory
    assert percent(rows[mem]["CPU %"]) < 50
    # Streaming: the docker CLI redraws the table in place from the live stream.
    with subprocess.Popen(["docker", "stats", busy], env=dk.docker_env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as live:
        time.sleep(3.5)
        live.kill()  # the docker CLI's stats loop does not stop on SIGTERM
        out, err = live.communicate(timeout=10)
    frames = [f for f in out.split("\033[H") if f.strip()]
    assert len(frames) >= 3, (out, err)
    last = re.sub(r"\033\[[JK]", "", frames[-1])
    assert percent(table(last)[busy]["CPU %"]) > 50, last
    # Without names: every running container, the same columns.
    assert {busy, mem} <= set(table(dk.docker("stats", "--no-stream").stdout))
    # The raw document, as the docker CLI reads it.
    status, headers, body = dk.http("GET", f"/v1.51/containers/{busy}/stats?stream=0")
    doc = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert doc["name"] == f"/{busy}" and doc["id"] == busy_id
    assert doc["memory_stats"]["limit"] == 64 << 20
    assert doc["cpu_stats"]["online_cpus"] >= 1 and doc["precpu_stats"]["system_cpu_usage"] > 0
    assert doc["preread"] < doc["read"] and doc["networks"]["eth0"]["rx_packets"] >= 0
    if os.path.exists("/sys/fs/cgroup/cpuacct/cgroup.procs"):  # v1: the accounting groups
        assert len(doc["cpu_stats"]["cpu_usage"]["percpu_usage"]) >= 1
        assert doc["blkio_stats"]["sectors_recursive"] == []  # a blkio group: lists, not null
    status, _, body = dk.http("GET", f"/v1.51/containers/{busy}/stats?stream=0&one-shot=1")
    doc = json.loads(body)
    assert doc["cpu_stats"]["cpu_usage"]["total_usage"] > 0 and doc["precpu_stats"][
        "cpu_usage"]["total_usage"] == 0


def test_docker_stats_counts_traffic_to_a_published_port(dk: DockerApi) -> None:
    name, port = f"web{dk.engine.token}", free_port()
    dk.docker("run", "-d", "--name", name, "-p", f"{port}:80", "busybox", "sh", "-c",
              "mkdir /www && head -c 200000 /dev/zero > /www/big && httpd -f -p 80 -h /www")
    wait_for(lambda: _get(port) == 200, 30, "httpd to serve /big")
    before = table(dk.docker("stats", "--no-stream", name).stdout)[name]["NET I/O"]
    for _ in range(5):
        assert http_get("127.0.0.1", port, "/big")[0] == 200
    rx, tx = table(dk.docker("stats", "--no-stream", name).stdout)[name]["NET I/O"].split(" / ")
    assert size(tx) - size(before.split(" / ")[1]) >= 5 * 200_000, (before, tx)
    assert size(rx) > 0


def _get(port: int) -> int:
    try:
        return http_get("127.0.0.1", port, "/big")[0]
    except OSError:
        return 0


def test_docker_top_lists_the_processes(dk: DockerApi) -> None:
    name = f"top{dk.engine.token}"
    cid = cid_of(dk.docker("run", "-d", "--name", name, "busybox", "sh", "-c",
                           "sleep 600 & while :; do sleep 1; done"))
    dk.engine.note_pids(cid)
    wait_for(lambda: "sleep 600" in dk.docker("top", name).stdout, 10, "both processes")
    lines = dk.docker("top", name).stdout.splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    commands = [line.split(None, 7)[7] for line in lines[1:]]
    assert "sh -c sleep 600 & while :; do sleep 1; done" in commands
    assert "sleep 600" in commands
    pid = json.loads(dk.docker("inspect", name).stdout)[0]["State"]["Pid"]
    assert str(pid) in [line.split()[1] for line in lines[1:]]  # host pids, as dockerd
    assert all(int(line.split()[1]) != 1 for line in lines[1:])  # not the host's init
    # A forest listing refuses -q: ps lists the whole host, and only the container's stay.
    lines = dk.docker("top", name, "-ef", "f").stdout.splitlines()
    pids = {int(line.split()[1]) for line in lines[1:]}
    assert pid in pids and 1 not in pids and len(pids) >= 2, lines
    lines = dk.docker("top", name, "-o", "pid,comm").stdout.splitlines()
    assert lines[0].split() == ["PID", "COMMAND"] and "sleep" in [r.split()[1] for r in lines]
    status, _, body = dk.http("GET", f"/containers/{name}/top?ps_args=aux")
    assert status == 200 and json.loads(body)["Titles"][:2] == ["USER", "PID"]
    dk.docker("stop", "-t", "0", name)
    done = dk.docker("top", name, check=False)
    assert done.returncode == 1
    assert daemon_error(done) == f"Error response from daemon: container {cid} is not running"


def test_stats_of_a_stopped_container_and_the_end_of_collection(dk: DockerApi) -> None:
    name = f"gone{dk.engine.token}"
    cid = cid_of(dk.docker("run", "-d", "--name", name, "busybox", "sleep", "600"))
    conn = UnixHTTPConnection(dk.socket, timeout=30)
    conn.request("GET", f"/containers/{name}/stats")
    stream = conn.getresponse()
    first, second = json.loads(stream.readline()), json.loads(stream.readline())
    assert second["precpu_stats"] == first["cpu_stats"] and second["preread"] == first["read"]
    assert second["pids_stats"]["current"] == 1
    dk.docker("stop", "-t", "0", name)
    # Stopped: zeroed documents, as dockerd streams them (its collector reads nothing).
    deadline = time.monotonic() + 10
    while json.loads(stream.readline())["read"] != "0001-01-01T00:00:00Z":
        assert time.monotonic() < deadline
    row = table(dk.docker("stats", "--no-stream", name).stdout)[name]
    assert [row[k] for k in HEADER[2:]] == ["0.00%", "0B / 0B", "0.00%", "0B / 0B",
                                            "0B / 0B", "0"]
    status, _, body = dk.http("GET", f"/containers/{name}/stats?stream=false")
    assert status == 200 and json.loads(body)["read"] == "0001-01-01T00:00:00Z"
    dk.docker("rm", name)
    # Removed: the collection stops and the stream ends.
    assert stream.read() is not None  # to EOF, well before the 30 s socket timeout
    conn.close()
    status, _, body = dk.http("GET", f"/containers/{cid}/stats?stream=false")
    assert (status, json.loads(body)) == (404, {"message": f"No such container: {cid}"})


def test_moor_stats_and_moor_top(engine: Engine) -> None:
    name, idle = f"mbusy{engine.token}", f"midle{engine.token}"
    engine.moor("run", "-d", "--name", name, "-m", "64m", "busybox", "sh", "-c", BUSY)
    engine.moor("create", "--name", idle, "busybox", "true")
    rows = table(engine.moor("stats", "--no-stream", name, idle).stdout)
    assert percent(rows[name]["CPU %"]) > 50, rows
    assert rows[name]["MEM USAGE / LIMIT"].endswith(" / 64MiB")
    assert [rows[idle][k] for k in HEADER[2:]] == ["0.00%", "0B / 0B", "0.00%", "0B / 0B",
                                                   "0B / 0B", "0"]
    assert name in table(engine.moor("stats", "--no-stream").stdout)
    # Live: a table a second until interrupted.
    with subprocess.Popen([sys.executable, "-m", "moor.cli", "stats", name], cwd=REPO,
                          env=engine.env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        tables = [proc.stdout.readline() for _ in range(4)]
        proc.terminate()
    assert tables[0].split() == "CONTAINER ID NAME CPU % MEM USAGE / LIMIT MEM % NET I/O " \
                                "BLOCK I/O PIDS".split() and tables[2] == tables[0]
    out = engine.moor("top", name).stdout.splitlines()
    assert out[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert any(line.endswith(f"sh -c {BUSY}") for line in out[1:]), out
    assert engine.moor("top", name, "-o", "pid,comm").stdout.split()[:2] == ["PID", "COMMAND"]
    done = engine.moor("top", idle, check=False)
    cid = engine.container(idle).id  # type: ignore[union-attr]
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error response from daemon: container {cid} is not running"
    done = engine.moor("stats", "--no-stream", f"nosuch{engine.token}", check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error response from daemon: No such container: " \
                                  f"nosuch{engine.token}"

