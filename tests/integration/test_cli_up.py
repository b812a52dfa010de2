"""`moor up` owns what it starts: named children, stopped with it; kill -9 leaves nothing
that a second `moor up` cannot take over.

Each test runs the real program (`python -m moor.cli up`, as root: it runs a worker) on a
private data root, hence its own embedded redis-server on a unix socket (never port
6379), with a unique key prefix, bridge and cgroup parent. Every process is found by PID
and start time, and the teardown stops whatever a failed test left.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from moor.embedded import ensure_embedded, stop_embedded
from workers.proc.process import start_ticks

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.privileged
TITLES = {"reducer": "moor reducer", "worker": "moor worker ", "api": "moor api"}



def cmdline(pid: int) -> str:
    """Return what `ps -o cmd` shows for a pid ('' when it is gone)."""
    done = subprocess.run(["ps", "-o", "cmd=", "-p", str(pid)], capture_output=True,
                          text=True, timeout=10)
    return done.stdout.strip()


def wait_for(cond: Callable[[], Any], timeout: float, what: str,
             detail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{detail()}")
        time.sleep(0.05)
    return value


@dataclass
class Up:
    """One `moor up` process and the pids it reported."""

    proc: subprocess.Popen[bytes]
    log: Path
    children: dict[str, int] = field(default_factory=dict)  # reducer/worker/api -> pid
    redis: int = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class Site:
    """A private data root and environment for `moor up`; remembers every pid it saw."""

    work: str
    env: dict[str, str]
    seen: dict[int, int | None] = field(default_factory=dict)  # pid -> start ticks
    ups: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.env["MOOR_DATA_ROOT"]

    def start(self, name: str) -> Up:
        """Start `moor up` and wait until its three children run and the API listens."""
        log = Path(self.work, f"{name}.log")
        with open(log, "ab") as out:
            # --no-reconcile: these tests are about processes, not the host's resources
            # (reconcile touches only this engine's own since finding 13 of issue 8).
            proc = subprocess.Popen([sys.executable, "-m", "moor.cli", "up", "--no-reconcile"],
                                    cwd=REPO,
                                    env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)
        up = Up(proc=proc, log=log)
        self.ups.append(proc)
        self.note(proc.pid)

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"moor up exited {proc.returncode}\n{up.text()}")
            text = up.text()
            for role, title in TITLES.items():
                match = re.search(rf"pid (\d+) +{title.strip()}", text)
                if match:
                    up.children[role] = int(match.group(1))
            redis = re.search(r"redis unix://\S+ pid (\d+)", text)
            up.redis = int(redis.group(1)) if redis else 0
            return len(up.children) == 3 and up.redis > 0 and "moor api: listening" in text

        wait_for(ready, 60, "moor up to start its children", up.text)
        for pid in (*up.children.values(), up.redis):
            self.note(pid)
        return up

    def note(self, pid: int) -> None:
        self.seen.setdefault(pid, start_ticks(pid))

    def gone(self, pid: int) -> Callable[[], bool]:
        """Return a check that the process we saw as `pid` has exited."""
        return lambda: not self.alive(pid)

    def alive(self, pid: int) -> bool:
        """Tell whether the very process we saw as `pid` still runs (not a reused pid)."""
        ticks = start_ticks(pid)
        return ticks is not None and ticks == self.seen.get(pid)


@pytest.fixture
def site(privileged: None) -> Iterator[Site]:
    token = secrets.token_hex(3)
    work = tempfile.mkdtemp(prefix=f"moor-up-{token}-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOR_")}
    env.update(MOOR_DATA_ROOT=os.path.join(work, "data"), MOOR_PREFIX=f"moorup{token}",
               MOOR_SUBNET="10.213.250.0/24", MOOR_BRIDGE=f"moorup{token}",
               MOOR_CGROUP_PARENT=f"moorup{token}", PYTHONUNBUFFERED="1")
    handle = Site(work=work, env=env)
    try:
        yield handle
    finally:
        for proc in handle.ups:  # a failed test's moor up: stopped and reaped
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        for pid in handle.seen:  # anything it left: ours, by PID and start time
            if handle.alive(pid):
                os.kill(pid, signal.SIGKILL)
        stop_embedded(handle.root)
        parent = env["MOOR_CGROUP_PARENT"]  # v2: cgroup/<parent>, v1: cgroup/<ctl>/<parent>
        for group in [*Path("/sys/fs/cgroup").glob(parent),
                      *Path("/sys/fs/cgroup").glob(f"*/{parent}")]:
            group.rmdir()
        assert not Path("/sys/class/net", env["MOOR_BRIDGE"]).exists()
        shutil.rmtree(work)


def assert_titles(up: Up) -> None:
    """`ps -eo pid,cmd` names every process, as the README says."""
    listing = subprocess.run(["ps", "-eo", "pid,cmd"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    shown = {int(line.split(None, 1)[0]): line.split(None, 1)[1]
             for line in listing.splitlines()[1:] if len(line.split(None, 1)) == 2}
    assert shown[up.proc.pid] == "moor up"
    for role, title in TITLES.items():
        assert shown[up.children[role]].startswith(title.strip()), (role, shown)
    assert "redis-server" in shown[up.redis]


def stop(up: Up) -> int:
    up.proc.send_signal(signal.SIGTERM)
    return up.proc.wait(timeout=60)


def assert_all_gone(site: Site, up: Up) -> None:
    for pid in (up.proc.pid, *up.children.values(), up.redis):
        wait_for(site.gone(pid), 20, f"pid {pid} ({cmdline(pid)}) to exit")
    rdir = Path(site.root, "redis")
    assert not (rdir / "redis.sock").exists() and not (rdir / "server.json").exists()
    assert not Path(site.root, "docker.sock").exists()
    assert not Path(site.root, "up.json").exists()


def test_sigterm_stops_the_children_and_the_redis_it_started(site: Site) -> None:
    up = site.start("up")
    assert "(started now; stopped with moor up)" in up.text()
    assert_titles(up)
    for role in ("reducer", "worker", "api"):  # it says which process may be killed
        assert re.search(rf"{TITLES[role].strip()}.*if killed: safe", up.text()), role
    assert "moor-supervisor <id>" in up.text()
    assert stop(up) == 0, up.text()
    assert_all_gone(site, up)


def test_kill_9_then_a_second_up_takes_over_and_stops_everything(site: Site) -> None:
    first = site.start("first")
    record = json.loads(Path(site.root, "up.json").read_text())
    assert record["redis"][0] == first.redis and record["pid"] == first.proc.pid
    first.proc.kill()  # SIGKILL: no clean-up of its own
    first.proc.wait(timeout=10)
    # The kernel's death signal (SIGTERM) stops the children on their own. (Not waited for
    # here: the worker's rq may take up to a minute to stop right after its start; taking
    # over is the next moor up's job.)
    for role in ("reducer", "api"):
        pid = first.children[role]
        wait_for(site.gone(pid), 20, f"the old {role} to exit")
    assert site.alive(first.redis), "the Redis stays for the next moor up"

    second = site.start("second")
    assert "adopted; stopped with moor up" in second.text(), second.text()
    assert second.redis == first.redis
    for role, pid in first.children.items():  # it waited for (or ended) the old ones
        assert not site.alive(pid), f"old {role} {pid} still runs: {cmdline(pid)}"
    assert_titles(second)
    assert stop(second) == 0, second.text()
    assert_all_gone(site, second)


def test_a_redis_it_found_running_is_left_running(site: Site) -> None:
    server = ensure_embedded(site.root)  # started by someone else (any moor command)
    site.note(server.pid)
    up = site.start("up")
    assert up.redis == server.pid and "(found running; left running)" in up.text()
    assert stop(up) == 0, up.text()
    for pid in (up.proc.pid, *up.children.values()):
        wait_for(site.gone(pid), 20, f"pid {pid} to exit")
    assert site.alive(server.pid)
    assert stop_embedded(site.root)


def test_a_second_up_on_the_same_root_is_refused(site: Site) -> None:
    up = site.start("up")
    done = subprocess.run([sys.executable, "-m", "moor.cli", "up", "--no-reconcile"],
                          cwd=REPO, env=site.env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"another moor up (pid {up.proc.pid}) runs on {site.root}" in done.stderr
    assert_titles(up)  # and the first one is untouched
    assert stop(up) == 0
    assert_all_gone(site, up)
