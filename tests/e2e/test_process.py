"""The supervisor and container process on the real kernel: namespaces, cgroups, exits, logs.

Each test uses a busybox rootfs (a plain directory) and a container id unique to
the test; teardown kills what is left by pid, removes cgroups and checks that
nothing leaked.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
import redis

from commands import schema as c
from commands.codec import CODEC
from engine.errors import MoorError
from tests.conftest import RedisServer, free_port, missing_capability, start_redis
from workers.proc import cgroups, process, stopper
from workers.proc.logs import parse_time, read_logs
from workers.proc.spawn import SpawnError, SpawnResult, spawn
from workers.proc.spec import BindMount, ExitReport, Limits, ProcessSpec

pytestmark = pytest.mark.privileged
BUSYBOX = "/bin/busybox"
REPO = str(Path(__file__).resolve().parents[2])
RFC3339NANO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")


@pytest.fixture(scope="module")
def rootfs() -> Iterator[str]:
    """Build a minimal busybox rootfs once for the module."""
    if not os.path.exists(BUSYBOX):
        missing_capability(f"{BUSYBOX} (apt-get install busybox-static)")
    root = tempfile.mkdtemp(prefix="moor-test-rootfs-")
    os.chmod(root, 0o755)  # mkdtemp makes it 0700: nobody could not even reach /
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp", "home"):
        os.makedirs(os.path.join(root, d))
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True,
                             text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", applet))
    Path(root, "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
    Path(root, "etc/group").write_text("root:x:0:\nusers:x:100:nobody\nnogroup:x:65534:\n")
    Path(root, "etc/not-executable").write_text("#!/bin/sh\necho hi\n")
    yield root
    shutil.rmtree(root)


Make = Callable[..., ProcessSpec]


@pytest.fixture
def make_spec(privileged: None, rootfs: str, run_id: str, tmp_path: Path) -> Iterator[Make]:
    """Return a factory of specs with unique ids; clean up every container they ran."""
    made: list[ProcessSpec] = []

    def make(*argv: str, **kw: object) -> ProcessSpec:
        cid = f"moort{run_id}{len(made)}"
        state = tmp_path / cid
        fields: dict[str, object] = {
            "container_id": cid, "rootfs": rootfs, "argv": argv, "env": ("PATH=/bin",),
            "state_dir": str(state), "log_path": str(state / f"{cid}-json.log"),
            "hostname": cid[:12]}
        fields.update(kw)
        spec = ProcessSpec(**fields)  # type: ignore[arg-type]
        made.append(spec)
        return spec

    yield make
    for spec in made:
        _kill_recorded(spec.state_dir, process.PID_FILE)
        if not _wait(functools.partial(_supervisor_gone, spec.state_dir), 5):
            _kill_recorded(spec.state_dir, process.SUPERVISOR_PID_FILE)
        cgroups.release_cgroup(spec.container_id)
        assert not any(os.path.exists(d) for d in cgroups.cgroup_dirs(spec.container_id).values())
        assert not process.is_alive(spec.state_dir)
        assert not process.supervisor_alive(spec.state_dir)
    assert rootfs not in Path("/proc/self/mountinfo").read_text()  # mounts stay in the container


def _supervisor_gone(state_dir: str) -> bool:
    return not process.supervisor_alive(state_dir)


def _kill_recorded(state_dir: str, name: str) -> None:
    ref = process.read_pid_file(os.path.join(state_dir, name))
    if ref is not None and process.start_ticks(ref.pid) == ref.start_ticks:
        os.kill(ref.pid, signal.SIGKILL)


def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_exit(spec: ProcessSpec, timeout: float = 10) -> process.ExitStatus:
    """Wait until the supervisor has recorded the exit and is gone."""
    assert _wait(lambda: not process.supervisor_alive(spec.state_dir), timeout)
    status = process.read_exit(spec.state_dir)
    assert status is not None
    return status


def logged(spec: ProcessSpec) -> list[tuple[str, str]]:
    return [(stream, line) for stream, _, line in read_logs(spec.log_path)]


def test_runs_as_pid1_with_own_hostname_proc_and_logs(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", "echo pid=$$; hostname; cat /proc/1/cmdline; echo;"
                     " ls /proc | grep -c '^[0-9]'; echo oops >&2; exit 3")
    result = spawn(spec)
    assert isinstance(result, SpawnResult) and result.pid > 1 and result.supervisor_pid > 1
    status = wait_exit(spec)
    assert (status.exit_code, status.signal, status.oom_killed) == (3, None, False)
    assert status.pid == result.pid and status.started_at_ns == result.started_at_ns
    assert status.finished_at_ns >= status.started_at_ns
    lines = logged(spec)
    assert lines[0] == ("stdout", "pid=1\n")
    assert lines[1] == ("stdout", spec.hostname + "\n")
    assert lines[2][1].startswith("sh\0-c\0echo pid=$$")
    assert int(lines[3][1]) <= 3  # sh, and ls/grep: none of the host's pids
    assert ("stderr", "oops\n") in lines
    assert not os.path.exists(os.path.join(spec.state_dir, process.PID_FILE))


def test_log_is_docker_json_file(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", "echo '<a & b>'; printf 'no newline' >&2")
    spawn(spec)
    wait_exit(spec)
    raw = Path(spec.log_path).read_text().splitlines()
    assert raw[0].startswith('{"log":"\\u003ca \\u0026 b\\u003e\\n","stream":"stdout","time":"')
    entries = [json.loads(line) for line in raw]
    assert [list(e) for e in entries] == [["log", "stream", "time"]] * 2
    assert {(e["stream"], e["log"]) for e in entries} == {
        ("stdout", "<a & b>\n"), ("stderr", "no newline")}
    assert all(RFC3339NANO.fullmatch(e["time"]) for e in entries)
    stamped = list(read_logs(spec.log_path, timestamps=True, tail=1))
    assert len(stamped) == 1 and stamped[0][2] == f"{stamped[0][1]} {entries[-1]['log']}"
    second = parse_time(entries[1]["time"])
    assert [e[2] for e in read_logs(spec.log_path, since=second)] == [entries[1]["log"]]
    assert [e[2] for e in read_logs(spec.log_path, until=second)] == [entries[0]["log"]]
    assert list(read_logs(spec.log_path, tail=0)) == []


def test_follow_reads_until_the_supervisor_is_gone(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", "for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done")
    spawn(spec)
    lines = [line for _, _, line in read_logs(spec.log_path, follow=True,
                                               state_dir=spec.state_dir)]
    assert lines == [f"line{i}\n" for i in range(1, 6)]
    assert list(read_logs(spec.log_path, tail=2))[-1][2] == "line5\n"


def test_stop_with_a_trap_exits_143(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", 'trap "exit 143" TERM; echo ready; while :; do sleep 0.1; done')
    spawn(spec)
    assert _wait(lambda: bool(logged(spec)), 5)
    started = time.monotonic()
    assert process.stop_container(spec.state_dir, "SIGTERM", timeout=5) == 143
    assert time.monotonic() - started < 3
    status = wait_exit(spec)
    assert (status.exit_code, status.signal) == (143, None)


def test_stop_falls_back_to_sigkill_after_timeout(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")  # PID 1 without a handler ignores SIGTERM
    spawn(spec)
    started = time.monotonic()
    assert process.stop_container(spec.state_dir, "TERM", timeout=1) == 137
    assert time.monotonic() - started >= 1.0
    status = wait_exit(spec)
    assert (status.exit_code, status.signal) == (137, signal.SIGKILL)
    # Stopping again is idempotent and signalling a gone process is refused.
    assert process.stop_container(spec.state_dir, "TERM", timeout=1) == 137
    assert process.signal_container(spec.state_dir, "KILL") is False


def _exit_after(spec: ProcessSpec, started: float, timeout: float = 5) -> float:
    """Return the seconds from started until exit.json appeared."""
    assert _wait(lambda: process.read_exit(spec.state_dir) is not None, timeout)
    return time.monotonic() - started


def _supervisor_log(spec: ProcessSpec) -> str:
    return Path(spec.state_dir, process.SUPERVISOR_LOG).read_text()


def test_request_stop_returns_at_once_and_the_supervisor_sigkills(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")  # PID 1 without a handler ignores SIGTERM
    spawn(spec)
    started = time.monotonic()
    assert process.request_stop(spec.state_dir, "SIGTERM", 1) is True
    assert time.monotonic() - started < 0.05
    assert process.is_alive(spec.state_dir)
    assert 1.0 <= _exit_after(spec, started) < 2.0
    status = wait_exit(spec)
    assert (status.exit_code, status.signal) == (137, signal.SIGKILL)
    assert "outlived its stop timeout" in _supervisor_log(spec)
    assert process.request_stop(spec.state_dir, "SIGTERM", 1) is False  # exited


def test_request_stop_of_a_trapping_shell_exits_143(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", 'trap "exit 143" TERM; echo ready; while :; do sleep 0.1; done')
    spawn(spec)
    assert _wait(lambda: bool(logged(spec)), 5)
    started = time.monotonic()
    assert process.request_stop(spec.state_dir, signal.SIGTERM, 1) is True
    assert time.monotonic() - started < 0.05
    status = wait_exit(spec)
    assert (status.exit_code, status.signal) == (143, None)
    assert "outlived" not in _supervisor_log(spec)


def test_request_stop_keeps_the_earlier_deadline(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")
    spawn(spec)
    started = time.monotonic()
    assert process.request_stop(spec.state_dir, "TERM", 0.3)
    assert process.request_stop(spec.state_dir, "TERM", 60)  # does not postpone the kill
    assert _exit_after(spec, started) < 1.5
    assert wait_exit(spec).exit_code == 137


def test_request_stop_with_a_negative_timeout_never_escalates(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")
    spawn(spec)
    assert process.request_stop(spec.state_dir, "TERM", -1) is True
    assert process.request_stop(spec.state_dir, "TERM", None) is True
    assert not Path(spec.state_dir, process.STOP_FILE).exists()
    time.sleep(0.3)
    assert process.is_alive(spec.state_dir)
    assert process.request_stop(spec.state_dir, "KILL", -1) is True
    assert wait_exit(spec).exit_code == 137


def test_request_stop_escalates_after_the_process_closed_its_output(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", "exec >&- 2>&-; exec sleep 1000")
    spawn(spec)
    time.sleep(0.2)  # let it close both pipes: the supervisor must still watch it
    started = time.monotonic()
    assert process.request_stop(spec.state_dir, "TERM", 0.3)
    assert _exit_after(spec, started) < 1.5
    assert wait_exit(spec).exit_code == 137


def test_request_stop_falls_back_to_a_helper_without_a_supervisor(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", "echo ready; exec sleep 1000")
    spawn(spec)
    assert _wait(lambda: bool(logged(spec)), 5)  # the supervisor reads stop.json only if woken
    sup_file = os.path.join(spec.state_dir, process.SUPERVISOR_PID_FILE)
    sup = process.read_pid_file(sup_file)
    assert sup is not None
    # Make the supervisor unreachable: its recorded incarnation no longer matches.
    process.write_pid_file(sup_file, process.ProcRef(sup.pid, sup.start_ticks - 1))
    started = time.monotonic()
    try:
        assert process.request_stop(spec.state_dir, "TERM", 0.3) is True
        assert time.monotonic() - started < 0.05
    finally:
        process.write_pid_file(sup_file, sup)
    assert _exit_after(spec, started) < 1.5
    assert wait_exit(spec).exit_code == 137
    assert "outlived" not in _supervisor_log(spec)  # the helper killed it, not the supervisor


def test_request_stop_rejects_an_invalid_signal(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")
    spawn(spec)
    with pytest.raises(ValueError, match="invalid signal: SIGNOPE"):
        process.request_stop(spec.state_dir, "SIGNOPE", 1)
    assert process.is_alive(spec.state_dir)
    assert process.signal_container(spec.state_dir, "KILL") is True
    assert wait_exit(spec).exit_code == 137


def test_escalation_ignores_a_previous_runs_request(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK)
    try:
        now = time.monotonic_ns()
        process.write_stop_request(str(tmp_path), process.StopRequest(
            signal=15, deadline_ns=now, started_at_ns=1))
        escalation = stopper.Escalation(str(tmp_path), 2, read_fd)
        assert escalation.timeout_ms() is None
        process.write_stop_request(str(tmp_path), process.StopRequest(
            signal=15, deadline_ns=now + 10**9, started_at_ns=2))
        os.write(write_fd, b"\0")
        escalation.on_wake()
        assert 0 < (escalation.timeout_ms() or 0) <= 1000
        with pytest.raises(BlockingIOError):  # the wake-up was drained
            os.read(read_fd, 1)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_kill_9_of_the_process_records_137(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")
    result = spawn(spec)
    assert process.is_alive(spec.state_dir)
    os.kill(result.pid, signal.SIGKILL)
    status = wait_exit(spec)
    assert (status.exit_code, status.signal, status.oom_killed) == (137, 9, False)
    assert not process.is_alive(spec.state_dir)


def test_signal_container_refuses_a_reused_pid(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")
    result = spawn(spec)
    ref = process.read_pid_file(os.path.join(spec.state_dir, process.PID_FILE))
    assert ref is not None
    # Pretend the recorded process was an earlier incarnation of this pid.
    process.write_pid_file(os.path.join(spec.state_dir, process.PID_FILE),
                           process.ProcRef(ref.pid, ref.start_ticks - 1, ref.started_at_ns))
    assert process.signal_container(spec.state_dir, signal.SIGKILL) is False
    assert process.start_ticks(result.pid) == ref.start_ticks  # untouched
    process.write_pid_file(os.path.join(spec.state_dir, process.PID_FILE), ref)
    assert process.signal_container(spec.state_dir, "SIGKILL") is True
    assert wait_exit(spec).exit_code == 137


def test_spawn_is_idempotent_while_running(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")
    first = spawn(spec)
    assert spawn(spec) == first
    assert process.stop_container(spec.state_dir, "KILL", timeout=1) == 137


def test_restart_reuses_the_state_dir_at_once(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000", limits=Limits(memory=64 << 20))
    first = spawn(spec)
    assert process.stop_container(spec.state_dir, "KILL", timeout=1) == 137
    second = spawn(spec)  # the old supervisor may still be finishing up
    assert second.pid != first.pid and process.is_alive(spec.state_dir)
    assert process.read_exit(spec.state_dir) is None
    time.sleep(0.2)  # long enough for a stale release to hit the new run
    assert process.is_alive(spec.state_dir)
    assert process.stop_container(spec.state_dir, "KILL", timeout=1) == 137
    assert wait_exit(spec).pid == second.pid


def _ps_cmd(pid: int) -> str:
    return subprocess.run(["ps", "-o", "cmd=", "-p", str(pid)], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_supervisor_is_named_after_its_container(make_spec: Make) -> None:
    # ps tells a supervisor from the worker that forked it: killing one kills its container.
    spec = make_spec("sleep", "1000")
    result = spawn(spec)
    title = f"moor-supervisor {spec.container_id[:12]}"
    cmdline = Path(f"/proc/{result.supervisor_pid}/cmdline").read_bytes()
    assert cmdline.rstrip(b"\0") == title.encode()
    assert _ps_cmd(result.supervisor_pid) == title
    assert _ps_cmd(result.pid) == "sleep 1000"  # the container shows its own command
    # The environment stays readable: operators and tests find an engine's processes there.
    assert b"PATH=" in Path(f"/proc/{result.supervisor_pid}/environ").read_bytes()
    assert process.stop_container(spec.state_dir, "KILL", timeout=1) == 137


def test_supervisor_ignores_termination_signals(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")
    result = spawn(spec)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(result.supervisor_pid, sig)
    time.sleep(0.1)
    assert process.supervisor_alive(spec.state_dir) and process.is_alive(spec.state_dir)
    assert process.stop_container(spec.state_dir, "KILL", timeout=1) == 137


def test_killed_supervisor_takes_the_process_down(make_spec: Make) -> None:
    spec = make_spec("sleep", "1000")
    result = spawn(spec)
    os.kill(result.supervisor_pid, signal.SIGKILL)
    assert _wait(lambda: not process.is_alive(spec.state_dir), 5)  # PDEATHSIG
    assert process.read_exit(spec.state_dir) is None
    assert process.stop_container(spec.state_dir, timeout=1) == 255  # Docker's "unknown"


_CALLER = """
import os, sys, msgspec
from workers import nsutil
from workers.proc.process import reap_children
from workers.proc.spawn import spawn
from workers.proc.spec import ProcessSpec
if sys.argv[2] == "subreaper":
    nsutil.set_child_subreaper()
spec = msgspec.json.decode(sys.argv[1].encode(), type=ProcessSpec)
result = spawn(spec)
print(msgspec.json.encode(result).decode(), flush=True)
with open(f"/proc/{result.supervisor_pid}/stat") as f:
    print(f.read().rsplit(")", 1)[1].split()[1], flush=True)  # the supervisor's parent
sys.stdin.readline()
print(reap_children(), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("mode", ["plain", "subreaper"])
def test_supervisor_outlives_a_killed_caller(make_spec: Make, rootfs: str, mode: str) -> None:
    go = f"/tmp/go-{os.getpid()}-{time.monotonic_ns()}"
    spec = make_spec("sh", "-c", f"while [ ! -e {go} ]; do sleep 0.02; done; exit 7")
    caller = subprocess.Popen(
        [sys.executable, "-c", _CALLER, msgspec.json.encode(spec).decode(), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert caller.stdout is not None
        result = msgspec.json.decode(caller.stdout.readline(), type=SpawnResult)
        parent = int(caller.stdout.readline())
        # Double fork: the supervisor was orphaned at once; a subreaper forks it directly.
        assert (parent == caller.pid) == (mode == "subreaper")
        caller.kill()
        caller.wait(timeout=10)
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        for stream in (caller.stdin, caller.stdout):
            if stream is not None:
                stream.close()
    assert process.supervisor_alive(spec.state_dir) and process.is_alive(spec.state_dir)
    Path(rootfs + go).touch()
    try:
        status = wait_exit(spec)
    finally:
        os.unlink(rootfs + go)
    assert (status.exit_code, status.pid) == (7, result.pid)


def test_a_subreaper_caller_reaps_its_supervisors(make_spec: Make) -> None:
    spec = make_spec("true")
    caller = subprocess.Popen(
        [sys.executable, "-c", _CALLER, msgspec.json.encode(spec).decode(), "subreaper"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True,
        env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert caller.stdin is not None and caller.stdout is not None
        result = msgspec.json.decode(caller.stdout.readline(), type=SpawnResult)
        caller.stdout.readline()
        assert wait_exit(spec).exit_code == 0
        stat = Path(f"/proc/{result.supervisor_pid}/stat")
        # It exits right after removing its pid file, then waits for its parent.
        assert _wait(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "Z", 5)
        caller.stdin.write("reap\n")
        caller.stdin.flush()
        assert caller.stdout.readline() == "1\n"
        assert not Path(f"/proc/{result.supervisor_pid}").exists()
    finally:
        caller.kill()
        caller.wait(timeout=10)
        for stream in (caller.stdin, caller.stdout):
            if stream is not None:
                stream.close()


def test_memory_limit_oom_kills_with_137(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo ${#x}',
                     limits=Limits(memory=32 << 20))
    spawn(spec)
    limit = Path(cgroups.cgroup_dirs(spec.container_id).get("memory", "/nonexistent"),
                 "memory.limit_in_bytes")
    if limit.exists():  # v1: the limit is in place while it runs (or it is already gone)
        try:
            assert int(limit.read_text()) == 32 << 20
        except FileNotFoundError:
            pass
    status = wait_exit(spec, timeout=30)
    assert (status.exit_code, status.oom_killed) == (137, True)


def test_pids_limit_refuses_forks(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait",
                     limits=Limits(pids=4))
    spawn(spec)
    status = wait_exit(spec)
    assert any("can't fork" in line or "Resource temporarily" in line
               for _, line in logged(spec)), logged(spec)
    assert status.exit_code != 0  # busybox sh gives up when fork fails


def test_user_and_working_dir(make_spec: Make) -> None:
    spec = make_spec("sh", "-c", "id -u; id -g; id -G; pwd; echo $HOME $HOSTNAME",
                     user="nobody", working_dir="/srv/app")
    spawn(spec)
    assert wait_exit(spec).exit_code == 0
    assert [line for _, line in logged(spec)] == [
        "65534\n", "65534\n", "65534 100\n", "/srv/app\n", f"/home {spec.hostname}\n"]
    numeric = make_spec("id", user="1234:5")
    spawn(numeric)
    wait_exit(numeric)
    assert logged(numeric)[0][1].startswith("uid=1234 gid=5")


@pytest.mark.parametrize(("argv", "code", "message"), [
    (("nope",), 127, 'exec: "nope": executable file not found in $PATH'),
    (("/bin/nope",), 127, 'exec: "/bin/nope": stat /bin/nope: no such file or directory'),
    (("/etc/not-executable",), 126, 'exec: "/etc/not-executable": permission denied'),
    (("/etc",), 126, 'exec: "/etc": permission denied'),
])
def test_exec_failures_map_to_docker_codes(make_spec: Make, argv: tuple[str, ...], code: int,
                                           message: str) -> None:
    spec = make_spec(*argv)
    with pytest.raises(SpawnError) as err:
        spawn(spec)
    assert (err.value.container_exit_code, err.value.message) == (code, message)
    assert (err.value.status, err.value.exit_code) == (400, 1)  # the caller's fault; CLI exit 1
    status = wait_exit(spec)
    assert (status.exit_code, status.error) == (code, message)


def test_unknown_user_fails_before_forking(make_spec: Make) -> None:
    spec = make_spec("true", user="ghost")
    with pytest.raises(SpawnError) as err:
        spawn(spec)
    assert (err.value.container_exit_code, err.value.status) == (128, 500)
    assert isinstance(err.value, MoorError)
    assert pickle.loads(pickle.dumps(err.value)).container_exit_code == 128
    assert str(err.value) == "unable to find user ghost: no matching entries in passwd file"


def test_joins_the_given_network_namespace(make_spec: Make, run_id: str) -> None:
    name = f"moort{run_id}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = f"/run/netns/{name}"
        spec = make_spec("sh", "-c", "readlink /proc/self/ns/net; cat /proc/net/dev", netns=path)
        spawn(spec)
        assert wait_exit(spec).exit_code == 0
        lines = [line for _, line in logged(spec)]
        assert lines[0] == f"net:[{os.stat(path).st_ino}]\n"
        assert [ln.split(":")[0].strip() for ln in lines[3:]] == ["lo"]
        host = make_spec("readlink", "/proc/self/ns/net")  # netns None: the host's network
        spawn(host)
        wait_exit(host)
        assert logged(host)[0][1] == os.readlink("/proc/self/ns/net") + "\n"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_missing_network_namespace_fails_the_start(make_spec: Make, run_id: str) -> None:
    spec = make_spec("true", netns=f"/run/netns/moort{run_id}-missing")
    with pytest.raises(SpawnError) as err:
        spawn(spec)
    assert err.value.container_exit_code == 128
    assert "no such file or directory" in err.value.message


def test_bind_mounts(make_spec: Make, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.2 peer\n")
    data = tmp_path / "data"
    data.mkdir()
    spec = make_spec("sh", "-c", "cat /etc/hosts; echo x > /etc/hosts || echo ro;"
                     " echo hi > /data/out", mounts=(
                         BindMount(source=str(hosts), target="/etc/hosts", readonly=True),
                         BindMount(source=str(data), target="/data")))
    spawn(spec)
    assert wait_exit(spec).exit_code == 0
    assert [line for _, line in logged(spec) if not line.startswith("sh:")] == [
        "10.0.0.2 peer\n", "ro\n"]
    assert (data / "out").read_text() == "hi\n" and hosts.read_text() == "10.0.0.2 peer\n"


def _entries(client: redis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)  # type: ignore[assignment]
    return [fields for _, fields in entries]


def _note_syncs(monkeypatch: pytest.MonkeyPatch, marker: Path) -> None:
    """Make the supervisor (forked from this process) note each exit.json fsync in marker."""
    real = process.sync_exit

    def sync_exit(state_dir: str) -> None:
        real(state_dir)
        with open(marker, "a") as f:
            f.write(state_dir + "\n")
    monkeypatch.setattr(process, "sync_exit", sync_exit)


def test_reports_the_exit_to_redis(make_spec: Make, redis_server: RedisServer,
                                   run_id: str, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    stream = f"moort{run_id}:commands"
    client = redis.Redis.from_url(redis_server.url)
    _note_syncs(monkeypatch, tmp_path / "synced")
    try:
        spec = make_spec("sh", "-c", "exit 5")
        spec = msgspec.structs.replace(spec, report=ExitReport(
            redis_url=redis_server.url, stream=stream, container_id=spec.container_id,
            generation=3, actor="supervisor@test"))
        result = spawn(spec)
        status = wait_exit(spec)
        [entry] = _entries(client, stream)
        # The entry the reducer reads: an envelope and a command, by the one codec.
        assert set(entry) == {b"env", b"cmd"}
        env = CODEC.envelope(entry[b"env"])
        # the id names the process: a report about another run can never be taken for it
        assert (env.command_id, env.container_id, env.actor) == (
            f"exit-{spec.container_id}-3-{result.pid}", spec.container_id, "supervisor@test")
        assert status.finished_at_ns <= env.issued_at <= time.time_ns()
        assert (status.exit_code, status.pid) == (5, result.pid)
        assert CODEC.command(entry[b"cmd"]) == c.ReportProcessExited(
            generation=3, exit_code=5, finished_at=status.finished_at_ns, oom_killed=False,
            pid=result.pid)
        assert Path(spec.state_dir, process.REPORTED_FILE).read_text() == \
            f"{result.started_at_ns}\n"
        # Redis took the exit at once: exit.json was not fsynced (Redis is the record).
        assert not (tmp_path / "synced").exists()
    finally:
        client.delete(stream)
        client.close()


def test_report_retries_until_redis_comes_up(make_spec: Make, run_id: str,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    spec = make_spec("true")
    spec = msgspec.structs.replace(spec, report=ExitReport(
        redis_url=url, stream=f"moort{run_id}:commands", container_id=spec.container_id,
        generation=1))
    _note_syncs(monkeypatch, tmp_path / "synced")
    spawn(spec)
    assert _wait(lambda: process.read_exit(spec.state_dir) is not None, 5)
    # The report failed: exit.json was made durable (once) before the retries.
    assert _wait(lambda: (tmp_path / "synced").exists(), 5)
    time.sleep(0.5)
    assert process.supervisor_alive(spec.state_dir)  # still retrying
    assert not Path(spec.state_dir, process.REPORTED_FILE).exists()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = start_redis(str(workdir), appendonly=False, port=port)
    try:
        status = wait_exit(spec, timeout=15)
        client = redis.Redis.from_url(url)
        [entry] = _entries(client, f"moort{run_id}:commands")
        client.close()
        assert CODEC.command(entry[b"cmd"]) == c.ReportProcessExited(
            generation=1, exit_code=0, finished_at=status.finished_at_ns, pid=status.pid)
        assert (tmp_path / "synced").read_text() == spec.state_dir + "\n"
    finally:
        server.kill(signal.SIGTERM)


def _fake_cgroup_root(tmp_path: Path, unified: bool) -> Path:
    """Lay out the files the kernel would show, as plain files."""
    root = tmp_path / "cgroup"
    if unified:
        for d in (root, root / "moorage"):
            d.mkdir(parents=True, exist_ok=True)
            (d / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    else:
        for controller in cgroups.V1_CONTROLLERS:
            (root / controller).mkdir(parents=True)
    return root


def test_cgroup_limits_v1_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_cgroup_root(tmp_path, unified=False)
    monkeypatch.setenv("MOOR_CGROUP_ROOT", str(root))
    monkeypatch.setenv("MOOR_CGROUP_PARENT", "moorage")
    mem = root / "memory/moorage/c1"
    mem.mkdir(parents=True)
    (mem / "memory.memsw.limit_in_bytes").write_text("")
    (root / "cpu/moorage/c1").mkdir(parents=True)
    (root / "cpu/moorage/c1/cpu.cfs_quota_us").write_text("")
    assert not cgroups.is_unified()
    cgroups.ensure_cgroup("c1", memory=32 << 20, pids=7, nano_cpus=1_500_000_000)
    assert (mem / "memory.limit_in_bytes").read_text() == str(32 << 20)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(64 << 20)  # Docker: 2x
    assert (root / "pids/moorage/c1/pids.max").read_text() == "7"
    assert (root / "cpu/moorage/c1/cpu.cfs_quota_us").read_text() == "150000"
    assert (root / "cpu/moorage/c1/cpu.cfs_period_us").read_text() == "100000"
    cgroups.ensure_cgroup("c1")
    assert (mem / "memory.limit_in_bytes").read_text() == "-1"
    assert (root / "pids/moorage/c1/pids.max").read_text() == "max"
    (mem / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cgroups.oom_killed("c1")
    with pytest.raises(ValueError):
        cgroups.ensure_cgroup("../x")


def test_cgroup_limits_v2_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_cgroup_root(tmp_path, unified=True)
    monkeypatch.setenv("MOOR_CGROUP_ROOT", str(root))
    monkeypatch.setenv("MOOR_CGROUP_PARENT", "moorage")
    group = root / "moorage/c2"
    group.mkdir()
    (group / "memory.swap.max").write_text("")
    assert cgroups.is_unified()
    assert cgroups.ensure_cgroup("c2", memory=32 << 20, memory_swap=96 << 20, pids=3,
                                 nano_cpus=250_000_000) == {"unified": str(group)}
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids +cpu +cpuset +io"
    assert (group / "memory.max").read_text() == str(32 << 20)
    assert (group / "memory.swap.max").read_text() == str(64 << 20)
    assert (group / "pids.max").read_text() == "3"
    assert (group / "cpu.max").read_text() == "25000 100000"
    assert not cgroups.oom_killed("c2")
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert cgroups.oom_killed("c2")
