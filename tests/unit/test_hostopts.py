"""Namespace, device, sysctl, tmpfs and user options: Docker's rules and texts (pure)."""

from __future__ import annotations

import pytest

from events.hostopts import (
    DEFAULT_DEVICE_RULES,
    check_host_options,
    device_rules,
    parse_device,
    tmpfs_options,
)
from events.specs import ContainerConfig, DeviceMapping, HostConfig

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8


def check(config: ContainerConfig | None = None, **host: object) -> None:
    check_host_options(config or ContainerConfig(image="x"), HostConfig(**host))  # type: ignore[arg-type]


def test_tmpfs_defaults_and_a_later_option_wins() -> None:
    assert tmpfs_options("") == (MS_NOSUID | MS_NODEV | MS_NOEXEC, "")
    assert tmpfs_options("exec,size=1m,mode=1777") == (MS_NOSUID | MS_NODEV,
                                                       "size=1m,mode=1777")
    assert tmpfs_options("ro,noexec") == (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "")
    with pytest.raises(ValueError, match=r'invalid tmpfs option \["colour" "red"\]'):
        tmpfs_options("colour=red")


def test_parse_device_as_dockers_cli() -> None:
    assert parse_device("/dev/sda") == DeviceMapping(path_on_host="/dev/sda",
                                                     path_in_container="/dev/sda")
    assert parse_device("/dev/sda:r") == DeviceMapping(
        path_on_host="/dev/sda", path_in_container="/dev/sda", cgroup_permissions="r")
    assert parse_device("/dev/sda:/dev/xvdc:rw").path_in_container == "/dev/xvdc"
    with pytest.raises(ValueError, match="invalid device mode: rwx"):
        parse_device("/dev/sda:/dev/xvdc:rwx")
    with pytest.raises(ValueError, match="xvdc is not an absolute path"):
        parse_device("/dev/sda:xvdc")


@pytest.mark.parametrize(("host", "text"), [
    ({"pid_mode": "container:"}, "invalid PID mode: container:"),
    ({"ipc_mode": "public"}, "invalid IPC mode: public"),
    ({"sysctls": {"kernel.panic": "1"}}, "sysctl 'kernel.panic=1' is not allowed"),
    ({"sysctls": {"kernel.hostname": "a"}}, 'sysctl "kernel.hostname" is not allowed as it '
                                            'conflicts with the OCI "hostname" field'),
    ({"sysctls": {"net.ipv4.ip_forward": "1"}, "network_mode": "host"},
     'sysctl "net.ipv4.ip_forward" not allowed in host network namespace'),
    ({"sysctls": {"kernel.shmmax": "1"}, "ipc_mode": "host"},
     'sysctl "kernel.shmmax" is not allowed in the hosts ipc namespace'),
    ({"tmpfs": {"/": ""}}, "invalid specification: destination can't be '/'"),
    ({"device_cgroup_rules": ("x 1:1 r",)}, "invalid device cgroup rule format: 'x 1:1 r'"),
    ({"group_add": ("3000000000",)}, "uids and gids must be in range 0-2147483647"),
])
def test_bad_options_get_dockers_text(host: dict[str, object], text: str) -> None:
    with pytest.raises(ValueError) as err:
        check(**host)  # type: ignore[arg-type]
    assert str(err.value) == text


def test_good_options_pass() -> None:
    check(pid_mode="host", ipc_mode="container:web", uts_mode="host", cgroupns_mode="private",
          sysctls={"net.core.somaxconn": "1024", "fs.mqueue.msg_max": "20",
                   "kernel.shm_rmid_forced": "1"},
          tmpfs={"/run": "size=64m"}, device_cgroup_rules=("c 1:3 rwm", "b *:* m"),
          runtime="runc", isolation="default")


def test_device_rules_privileged_default_and_granted() -> None:
    assert device_rules(True, [("c", 1, 3, "rwm")], ["c 9:9 r"]) == ("a *:* rwm",)
    assert device_rules(False, [("b", 8, 0, "r")], ["c 9:9 r"]) == (
        *DEFAULT_DEVICE_RULES, "b 8:0 r", "c 9:9 r")
    # Docker's allow-list: mknod of anything, read/write of the harmless nodes only.
    assert DEFAULT_DEVICE_RULES[:2] == ("c *:* m", "b *:* m")
    assert not any(r.startswith("b ") and r.endswith("rwm") for r in DEFAULT_DEVICE_RULES)
