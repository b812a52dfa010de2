"""What a container shares with the host, on real containers: devices, --privileged,
--tmpfs, --sysctl, --group-add, the namespace options and --init (issue 9)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from tests.e2e.conftest import Engine, moor_run, wait_for

pytestmark = pytest.mark.privileged


def script_output(engine: Engine, *args: str) -> str:
    """Run `sh -c SCRIPT` (the last arg) with flags in a container; return its logs once done."""
    *flags, script = args
    cid = moor_run(engine, *flags, "busybox", "sh", "-c", script)
    wait_for(lambda: not (c := engine.container(cid)) or not c.running, 20, "the script's end")
    return engine.moor("logs", cid).stdout


def ns_inode(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def pid_of(engine: Engine, cid: str) -> int:
    ctr = engine.container(cid)
    assert ctr is not None and ctr.running and ctr.pid
    return ctr.pid


# --- devices ---------------------------------------------------------------------------

def test_a_block_device_node_made_inside_cannot_be_opened(engine: Engine) -> None:
    out = script_output(engine, "mknod /tmp/sda b 8 0 && echo made; "
                                "head -c1 /tmp/sda >/dev/null 2>/tmp/err; cat /tmp/err")
    assert out.startswith("made\n") and "Operation not permitted" in out, out


def test_a_device_cgroup_rule_lets_that_node_open(engine: Engine) -> None:
    # /dev/zero is c 1:5; a node of it made under another name opens only where allowed.
    script = "mknod /tmp/z c 1:5 2>/dev/null || mknod /tmp/z c 1 5; head -c3 /tmp/z | wc -c"
    assert script_output(engine, script).strip().endswith("3")  # allowed by default
    script = "mknod /tmp/k b 7 0; head -c1 /tmp/k >/dev/null 2>/tmp/e; cat /tmp/e"
    assert "Operation not permitted" in script_output(engine, script)  # a loop device: denied
    out = script_output(engine, "--device-cgroup-rule", "b 7:* r", script)
    assert "Operation not permitted" not in out, out


def test_device_flag_makes_the_node_with_its_permissions(engine: Engine) -> None:
    out = script_output(engine, "--device", "/dev/null:/dev/mynull:rw",
                        "ls -l /dev/mynull; echo hi > /dev/mynull && echo wrote")
    assert out.startswith("crw-rw-rw-") and "1,   3" in out and "wrote" in out, out
    host = engine.inspect(engine.moor("ps", "-aq").stdout.split()[0])["HostConfig"]
    assert host["Devices"] == [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/mynull",
                                "CgroupPermissions": "rw"}]


def test_a_missing_device_fails_the_start_with_dockers_text(engine: Engine) -> None:
    done = engine.moor("run", "-d", "--device", "/dev/nope-moor", "busybox", "true",
                       check=False)
    assert done.returncode != 0
    assert ('error gathering device information while adding custom device "/dev/nope-moor": '
            "no such file or directory") in done.stderr


# --- privileged ------------------------------------------------------------------------

def test_privileged_can_mount_and_write_sys_and_proc(engine: Engine) -> None:
    out = script_output(engine, "--privileged",
                        "mkdir /m; mount -t tmpfs none /m && echo mounted; "
                        "grep CapEff /proc/self/status;"
                        " test -w /proc/sys/kernel && echo sys-writable; ls /dev | wc -l")
    lines = out.split()
    assert "mounted" in lines and "sys-writable" in lines, out
    assert int(lines[-1]) > 20  # the host's devices, not the minimal /dev
    default = script_output(engine, "mkdir /m; mount -t tmpfs none /m 2>&1 || echo refused")
    assert "refused" in default and "permission denied" in default, default


def test_privileged_shows_in_inspect(engine: Engine) -> None:
    cid = moor_run(engine, "--privileged", "busybox", "sleep", "60")
    host = engine.inspect(cid)["HostConfig"]
    assert host["Privileged"] is True
    assert host["MaskedPaths"] is None and host["ReadonlyPaths"] is None


# --- tmpfs, sysctl, group-add -----------------------------------------------------------

def test_read_only_with_tmpfs_writes_only_there(engine: Engine) -> None:
    out = script_output(engine, "--read-only", "--tmpfs", "/run:size=1m,mode=1777",
                        "echo x > /run/f && echo run-ok; echo x > /etc/f 2>/dev/null || "
                        "echo etc-refused; grep ' /run ' /proc/mounts")
    assert "run-ok" in out and "etc-refused" in out, out
    assert "tmpfs /run tmpfs rw,nosuid,nodev,noexec" in out and "size=1024k" in out, out


def test_sysctl_is_set_in_the_container_only(engine: Engine) -> None:
    with open("/proc/sys/net/ipv4/tcp_syncookies", encoding="ascii") as f:
        host_value = f.read().strip()
    want = "0" if host_value != "0" else "2"
    out = script_output(engine, "--sysctl", f"net.ipv4.tcp_syncookies={want}",
                        "cat /proc/sys/net/ipv4/tcp_syncookies "
                        "/proc/sys/net/ipv4/ip_unprivileged_port_start")
    assert out.split() == [want, "0"], out
    with open("/proc/sys/net/ipv4/tcp_syncookies", encoding="ascii") as f:
        assert f.read().strip() == host_value


def test_group_add_adds_supplementary_groups(engine: Engine) -> None:
    out = script_output(engine, "--user", "1000:1000", "--group-add", "root",
                        "--group-add", "4242", "id")
    assert out.strip() == "uid=1000 gid=1000 groups=0(root),1000,4242", out
    done = engine.moor("run", "-d", "--group-add", "audio", "busybox", "true", check=False)
    assert done.stderr.strip().endswith(
        "Unable to find group audio: no matching entries in group file"), done.stderr


# --- namespaces -------------------------------------------------------------------------

def test_pid_host_sees_host_processes(engine: Engine) -> None:
    out = script_output(engine, "--pid", "host", f"test -d /proc/{os.getpid()} && echo seen")
    assert out.strip() == "seen"
    assert script_output(engine, f"test -d /proc/{os.getpid()} || echo hidden").strip() == \
        "hidden"


def test_uts_host_has_the_hosts_hostname(engine: Engine) -> None:
    assert script_output(engine, "--uts", "host", "hostname").strip() == socket.gethostname()


def test_ipc_container_shares_the_donors_ipc_namespace(engine: Engine) -> None:
    donor = moor_run(engine, "--ipc", "shareable", "busybox", "sleep", "60")
    joiner = moor_run(engine, "--ipc", f"container:{donor}", "busybox", "sleep", "60")
    lone = moor_run(engine, "busybox", "sleep", "60")
    d, j, o = (pid_of(engine, c) for c in (donor, joiner, lone))
    assert ns_inode(d, "ipc") == ns_inode(j, "ipc") != ns_inode(o, "ipc")
    # And /dev/shm is the donor's: a file written by one shows in the other.
    engine.nsenter(donor, "sh", "-c", "echo shared > /dev/shm/note")
    assert engine.nsenter(joiner, "cat", "/dev/shm/note").strip() == "shared"


def test_ipc_of_a_non_shareable_container_is_refused(engine: Engine) -> None:
    donor = moor_run(engine, "busybox", "sleep", "60")
    done = engine.moor("run", "-d", "--ipc", f"container:{donor}", "busybox", "true",
                       check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"Error response from daemon: can't join IPC of container {donor}: non-shareable IPC "
        "(hint: use IpcMode:shareable for the donor container)")


def test_pid_container_joins_the_donors_pid_namespace(engine: Engine) -> None:
    donor = moor_run(engine, "busybox", "sleep", "60")
    joiner = moor_run(engine, "--pid", f"container:{donor}", "busybox", "sleep", "60")
    assert ns_inode(pid_of(engine, donor), "pid") == ns_inode(pid_of(engine, joiner), "pid")


def test_cgroupns_private_roots_the_containers_cgroup(engine: Engine) -> None:
    host_view = script_output(engine, "cat /proc/self/cgroup")
    private = script_output(engine, "--cgroupns", "private", "cat /proc/self/cgroup")
    cid_part = "moorage"
    assert cid_part in host_view and cid_part not in private, (host_view, private)


# --- init -------------------------------------------------------------------------------

def _zombies(pid: int) -> int:
    """Count the zombie children of a process (the container's PID 1)."""
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        children = f.read().split()
    count = 0
    for child in children:
        try:
            with open(f"/proc/{child}/stat", encoding="ascii") as st:
                count += st.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            continue
    return count


def test_init_is_pid_1_and_reaps_zombies(engine: Engine) -> None:
    # The subshell leaves an orphan that exits at once; PID 1 must reap it.
    script = "(sleep 0.2 &); exec sleep 60"
    plain = moor_run(engine, "busybox", "sh", "-c", script)
    with_init = moor_run(engine, "--init", "busybox", "sh", "-c", script)
    time.sleep(1.5)
    assert _zombies(pid_of(engine, plain)) == 1  # sleep as PID 1 reaps nothing
    pid = pid_of(engine, with_init)
    assert _zombies(pid) == 0
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:3] == [b"/sbin/docker-init", b"--", b"sh"]
    assert engine.inspect(with_init)["HostConfig"]["Init"] is True


# --- bad options ------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "text"), [
    (("--sysctl", "kernel.modprobe=/x"), "sysctl 'kernel.modprobe=/x' is not allowed"),
    (("--tmpfs", "run"), "invalid mount path: 'run' mount path must be absolute"),
    (("--tmpfs", "/run:bogus"), 'invalid tmpfs option ["bogus"]'),
    (("--pid", "sideways"), "invalid PID mode: sideways"),
    (("--ipc", "public"), "invalid IPC mode: public"),
    (("--uts", "guest"), "invalid UTS mode: guest"),
    (("--cgroupns", "shared"), "invalid cgroup namespace mode: shared, valid values are: "
                               "'private', 'host' or empty"),
    (("--runtime", "kata"), "Unknown runtime specified kata"),
    (("--isolation", "hyperv"), "Invalid isolation: \"hyperv\" - linux only supports 'default'"),
    (("--device-cgroup-rule", "c 1:x rwm"), "invalid device cgroup rule format: 'c 1:x rwm'"),
    (("--uts", "host", "--hostname", "box"), "conflicting options: hostname and the UTS mode"),
    (("--user", "4294967296"), "uids and gids must be in range 0-2147483647"),
    (("--pid", "container:nope-moor"), "cannot join PID of a non running container: "
                                       "nope-moor: No such container: nope-moor"),
])
def test_bad_options_get_dockers_text(engine: Engine, flags: tuple[str, ...], text: str) -> None:
    done = engine.moor("run", "-d", *flags, "busybox", "true", check=False)
    assert done.returncode != 0
    assert done.stderr.strip().endswith(text), done.stderr
