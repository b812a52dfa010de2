"""Capabilities and no_new_privs on real containers, read back from /proc/<pid>/status."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.e2e.conftest import Engine, moor_run, wait_for

pytestmark = pytest.mark.privileged

DEFAULT = "00000000a80425fb"


def status(engine: Engine, cid: str) -> dict[str, str]:
    """Return the Cap* and NoNewPrivs lines of the container process's /proc status."""
    ctr = engine.container(cid)
    assert ctr is not None and ctr.running and ctr.pid
    with open(f"/proc/{ctr.pid}/status", encoding="ascii") as f:
        pairs = (line.split(":", 1) for line in f)
        return {k: v.strip() for k, v in pairs if k.startswith(("Cap", "NoNewPrivs"))}


def own_permitted() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapPrm:"))


def test_default_container_has_dockers_default_set(engine: Engine) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    got = status(engine, cid)
    assert got == {"CapInh": "0" * 16, "CapPrm": DEFAULT, "CapEff": DEFAULT, "CapBnd": DEFAULT,
                   "CapAmb": "0" * 16, "NoNewPrivs": "0"}
    host = engine.inspect(cid)["HostConfig"]
    assert (host["CapAdd"], host["CapDrop"], host["SecurityOpt"]) == (None, None, None)


def test_drop_all_add_one(engine: Engine) -> None:
    cid = moor_run(engine, "--cap-drop", "all", "--cap-add", "net_bind_service", "busybox",
                   "sleep", "60")
    got = status(engine, cid)
    assert (got["CapEff"], got["CapPrm"], got["CapBnd"]) == ("0000000000000400",) * 3
    host = engine.inspect(cid)["HostConfig"]
    assert (host["CapAdd"], host["CapDrop"]) == (["CAP_NET_BIND_SERVICE"], ["ALL"])


def test_a_dropped_capability_is_really_gone(engine: Engine) -> None:
    cid = moor_run(engine, "--cap-drop", "CAP_CHOWN", "busybox", "sleep", "60")
    assert status(engine, cid)["CapEff"] == f"{0xa80425fb & ~1:016x}"
    # nsenter joins the namespaces but keeps its own caps: the container itself must try.
    cid2 = moor_run(engine, "--cap-drop", "CHOWN", "busybox", "sh", "-c",
                    "touch /tmp/f; chown 1 /tmp/f; echo rc=$? >/tmp/rc; sleep 60")
    rc = wait_for(lambda: engine.nsenter(cid2, "cat", "/tmp/rc", check=False).strip(), 10,
                  "the chown result")
    assert rc == "rc=1"


def test_add_all_gives_every_capability_the_engine_holds(engine: Engine) -> None:
    cid = moor_run(engine, "--cap-add", "ALL", "--cap-drop", "sys_admin", "busybox",
                   "sleep", "60")
    with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as f:
        last = int(f.read())
    want = ((1 << (last + 1)) - 1) & own_permitted() & ~(1 << 21)
    assert status(engine, cid)["CapEff"] == f"{want:016x}"


def test_non_root_user_keeps_the_bounding_set_only(engine: Engine) -> None:
    cid = moor_run(engine, "--user", "65534:65534", "busybox", "sleep", "60")
    got = status(engine, cid)
    assert (got["CapEff"], got["CapPrm"], got["CapBnd"]) == ("0" * 16, "0" * 16, DEFAULT)


def test_no_new_privileges(engine: Engine) -> None:
    cid = moor_run(engine, "--security-opt", "no-new-privileges", "busybox", "sleep", "60")
    assert status(engine, cid)["NoNewPrivs"] == "1"
    assert engine.inspect(cid)["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    off = moor_run(engine, "--security-opt", "no-new-privileges:false", "busybox", "sleep", "60")
    assert status(engine, off)["NoNewPrivs"] == "0"


@pytest.mark.parametrize(("flags", "text"), [
    (("--cap-add", "foo"), 'invalid CapAdd: unknown capability: "CAP_FOO"'),
    (("--cap-drop", "CAP_NOPE"), 'invalid CapDrop: unknown capability: "CAP_NOPE"'),
    (("--security-opt", "no-new-privileges=maybe"),
     'invalid --security-opt 2: "no-new-privileges=maybe"'),
    (("--security-opt", "bogus"), 'invalid --security-opt 1: "bogus"'),
])
def test_bad_options_get_dockers_text(engine: Engine, flags: tuple[str, ...], text: str) -> None:
    name = f"bad{engine.token}"
    done = engine.moor("run", "-d", "--name", name, *flags, "busybox", "true", check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == f"Error response from daemon: {text}"
    assert engine.container(name) is None


def test_capset_after_setuid_keeps_exactly_the_mask() -> None:
    """The init's calls on their own: bounding, keepcaps, setuid, capset (runc's order)."""
    from workers import nsutil

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child changes its own credentials; it never returns into pytest
        try:
            last = nsutil.cap_last_cap()
            nsutil.drop_capabilities(0x400 | 0x80, last)
            nsutil.set_keepcaps(True)
            os.setgid(65534)
            os.setuid(65534)
            nsutil.set_keepcaps(False)
            nsutil.set_capabilities(0x400)
            with open("/proc/self/status", encoding="ascii") as f:
                lines = [line for line in f if line.startswith("Cap")]
            os.write(write_fd, "".join(lines).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, encoding="ascii") as f:
        got = {k: v.strip() for k, v in (line.split(":", 1) for line in f)}
    os.waitpid(pid, 0)
    assert got == {"CapInh": "0" * 16, "CapPrm": "0000000000000400",
                   "CapEff": "0000000000000400", "CapBnd": "0000000000000480",
                   "CapAmb": "0" * 16}


# The container itself tries each write (nsenter keeps the host's caps); one line per probe.
_PROBE = r"""
probe() { name=$1; shift; out=$( ("$@") 2>&1 ); echo "$name rc=$? $out"; }
probe drop sh -c 'echo 1 > /proc/sys/vm/drop_caches'
probe sysrq sh -c 'echo h > /proc/sysrq-trigger'
probe kcore sh -c 'wc -c < /proc/kcore'
probe kcoretype stat -c %F /proc/kcore
probe keys sh -c 'wc -c < /proc/keys'
probe firmware sh -c 'ls -A /sys/firmware | wc -l'
probe firmwarew sh -c 'touch /sys/firmware/x'
probe hostname cat /proc/sys/kernel/hostname
echo done
"""


def probe(engine: Engine, *flags: str) -> dict[str, str]:
    cid = moor_run(engine, "--hostname", "probe", *flags, "busybox", "sh", "-c",
                   "{ " + _PROBE + "} > /tmp/probe 2>&1; sleep 60")
    out = wait_for(lambda: (lambda s: s if s.endswith("done") else "")(
        engine.nsenter(cid, "cat", "/tmp/probe", check=False).strip()), 10, "the probes",
        lambda: engine.nsenter(cid, "cat", "/tmp/probe", check=False))
    lines = (line.split(" ", 1) for line in out.splitlines()[:-1])
    return {k: v for k, v in lines}


def test_default_container_masks_and_freezes_proc(engine: Engine) -> None:
    got = probe(engine)
    # Writes under /proc/sys (and to sysrq-trigger, where the kernel has it) are refused.
    assert got["drop"].startswith("rc=1 ") and "Read-only file system" in got["drop"], got
    if os.path.exists("/proc/sysrq-trigger"):
        assert got["sysrq"].startswith("rc=1 ") and "Read-only file system" in got["sysrq"], got
    # /proc/kcore (where the kernel has it) and /proc/keys are /dev/null: empty.
    if os.path.exists("/proc/kcore"):
        assert got["kcore"] == "rc=0 0", got
        assert got["kcoretype"] == "rc=0 character special file", got
    assert got["keys"] == "rc=0 0", got
    # /sys/firmware is an empty read-only tmpfs.
    assert got["firmware"] == "rc=0 0", got
    assert got["firmwarew"].startswith("rc=1 ") and "Read-only file system" in got["firmwarew"]
    # Reading stays allowed.
    assert got["hostname"] == "rc=0 probe", got


def test_masked_and_read_only_paths_are_mounts(engine: Engine) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    mounts = {}
    for line in engine.nsenter(cid, "cat", "/proc/self/mountinfo").splitlines():
        fields = line.split()
        mounts[fields[4]] = fields[5].split(",")
    for path in ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"):
        if os.path.exists(path):
            assert "ro" in mounts[path], (path, mounts.get(path))
    for path in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"):
        if os.path.exists(path):
            assert path in mounts, path
    # /proc itself stays writable where Docker leaves it so (e.g. /proc/self/oom_score_adj).
    assert "rw" in mounts["/proc"], mounts["/proc"]


_RO_PROBE = r"""
probe() { name=$1; shift; out=$( ("$@") 2>&1 ); echo "$name rc=$? $out"; }
probe root touch /x
probe tmp touch /tmp/x
probe hosts sh -c 'echo 1.2.3.4 x >> /etc/hosts'
probe shm touch /dev/shm/x
probe null sh -c 'echo hi > /dev/null'
echo done
"""


def ro_probe(engine: Engine, *flags: str) -> tuple[str, dict[str, str]]:
    # The results go to /dev/shm: a tmpfs Docker leaves writable under --read-only.
    cid = moor_run(engine, *flags, "busybox", "sh", "-c",
                   "{ " + _RO_PROBE + "} > /dev/shm/probe 2>&1; sleep 60")
    out = wait_for(lambda: (lambda s: s if s.endswith("done") else "")(
        engine.nsenter(cid, "cat", "/dev/shm/probe", check=False).strip()), 10, "the probes",
        lambda: engine.nsenter(cid, "cat", "/dev/shm/probe", check=False))
    return cid, dict(line.split(" ", 1) for line in out.splitlines()[:-1])


def test_read_only_rootfs_refuses_writes_outside_tmpfs(engine: Engine) -> None:
    cid, got = ro_probe(engine, "--read-only")
    for name in ("root", "tmp", "hosts"):  # no tmpfs at /tmp unless --tmpfs asks
        assert got[name].startswith("rc=1 ") and "Read-only file system" in got[name], got
    assert (got["shm"], got["null"]) == ("rc=0 ", "rc=0 "), got
    assert engine.inspect(cid)["HostConfig"]["ReadonlyRootfs"] is True


def test_without_read_only_the_rootfs_is_writable(engine: Engine) -> None:
    cid, got = ro_probe(engine)
    assert all(v == "rc=0 " for v in got.values()), got
    assert engine.inspect(cid)["HostConfig"]["ReadonlyRootfs"] is False


# --- seccomp (Docker's default profile, custom profiles, unconfined) ----------------------

def seccomp_status(engine: Engine, cid: str) -> str:
    ctr = engine.container(cid)
    assert ctr is not None and ctr.running and ctr.pid
    with open(f"/proc/{ctr.pid}/status", encoding="ascii") as f:
        return next(line.split()[1] for line in f if line.startswith("Seccomp:"))


def test_default_container_is_filtered(engine: Engine) -> None:
    cid = moor_run(engine, "busybox", "sleep", "60")
    assert seccomp_status(engine, cid) == "2"
    off = moor_run(engine, "--security-opt", "seccomp=unconfined", "busybox", "sleep", "60")
    assert seccomp_status(engine, off) == "0"
    assert seccomp_status(engine, moor_run(engine, "--privileged", "busybox", "sleep", "60")) \
        == "0"


PROBES = ("mkdir /m; mount -t tmpfs none /m; echo mount=$?; unshare -U true; echo unshare=$?; "
          "reboot -f; echo reboot=$?; echo x > /tmp/m.ko; insmod /tmp/m.ko; echo insmod=$?; "
          "mkdir /tmp/d; echo mkdir=$?")


def syscall_probe(engine: Engine, *flags: str) -> dict[str, str]:
    cid = moor_run(engine, *flags, "busybox", "sh", "-c", PROBES + " 2>&1; sleep 60")
    out = wait_for(lambda: "mkdir=" in (text := engine.moor("logs", cid).stdout) and text, 20,
                   "the probes")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_default_profile_refuses_mount_unshare_reboot_and_modules(engine: Engine) -> None:
    got = syscall_probe(engine)
    assert (got["mount"], got["unshare"], got["reboot"], got["insmod"], got["mkdir"]) == (
        "1", "1", "1", "1", "0"), got
    # With CAP_SYS_ADMIN the profile lets unshare through (it depends on the granted caps).
    assert syscall_probe(engine, "--cap-add", "SYS_ADMIN")["unshare"] == "0"


def test_custom_profile_denying_mkdir(engine: Engine, tmp_path: Any) -> None:
    profile = tmp_path / "no-mkdir.json"
    profile.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    cid = moor_run(engine, "--security-opt", f"seccomp={profile}", "busybox", "sh", "-c",
                   "mkdir /tmp/d 2>&1; sleep 60")
    out = wait_for(lambda: engine.moor("logs", cid).stdout, 20, "mkdir's answer")
    assert "Operation not permitted" in out
    assert engine.inspect(cid)["HostConfig"]["SecurityOpt"][0].startswith(
        'seccomp={"defaultAction":"SCMP_ACT_ALLOW"')


def test_bad_profiles_get_dockers_text(engine: Engine, tmp_path: Any) -> None:
    done = engine.moor("run", "-d", "--security-opt", "seccomp=/nope/p.json", "busybox", "true",
                       check=False)
    assert done.stderr.strip().endswith("opening seccomp profile (/nope/p.json) failed: open "
                                        "/nope/p.json: no such file or directory")
    bad = tmp_path / "both.json"
    bad.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}]}))
    done = engine.moor("run", "-d", "--security-opt", f"seccomp={bad}", "busybox", "true",
                       check=False)
    assert done.returncode == 1 and done.stderr.strip().endswith(
        "both 'architectures' and 'archMap' are specified in the seccomp profile, use either "
        "'architectures' or 'archMap'"), done.stderr
