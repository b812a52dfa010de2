"""Capabilities and --security-opt: the table, Docker's combination order and its texts."""

from __future__ import annotations

import pytest

from events.caps import (
    CAPABILITIES,
    DEFAULT_CAPS,
    DEFAULT_MASK,
    capability_mask,
    check_capabilities,
    effective_caps,
    go_quote,
    no_new_privileges,
    normalize_caps,
)
from moor.cli import build_parser
from moor.lifecyclecli import container_spec


def mask(add: list[str], drop: list[str]) -> int:
    return capability_mask(effective_caps(add, drop))


def test_default_set_is_dockers_mask() -> None:
    assert DEFAULT_MASK == 0x00000000A80425FB  # the value /proc shows in a docker container
    assert len(DEFAULT_CAPS) == 14 and mask([], []) == DEFAULT_MASK


def test_table_matches_the_kernel_numbers() -> None:
    # Spot checks against linux/capability.h, independent of the table's order.
    assert (CAPABILITIES["CAP_NET_BIND_SERVICE"], CAPABILITIES["CAP_SYS_ADMIN"],
            CAPABILITIES["CAP_SETFCAP"], CAPABILITIES["CAP_CHECKPOINT_RESTORE"]) == (10, 21, 31, 40)
    assert len(CAPABILITIES) == 41


@pytest.mark.parametrize(("given", "want"), [
    (["net_admin", "CAP_chown", "Cap_Kill", "all", "NET_ADMIN"],
     ("CAP_NET_ADMIN", "CAP_CHOWN", "CAP_KILL", "ALL")),
    ([], ()),
])
def test_normalize(given: list[str], want: tuple[str, ...]) -> None:
    assert normalize_caps(given) == want


def test_docker_order() -> None:
    every = (1 << 41) - 1
    assert mask(["NET_BIND_SERVICE"], ["ALL"]) == 0x400  # drop ALL: exactly the adds
    assert mask(["ALL"], []) == every
    assert mask(["ALL"], ["SYS_ADMIN", "chown"]) == every & ~(1 << 21) & ~1  # add ALL wins
    assert mask(["ALL"], ["ALL"]) == every  # ALL is not a capability to drop here
    assert mask([], ["ALL"]) == 0
    assert mask(["SYS_ADMIN"], []) == DEFAULT_MASK | 1 << 21
    assert mask([], ["NET_RAW", "cap_mknod"]) == DEFAULT_MASK & ~(1 << 13) & ~(1 << 27)
    # Drops come before adds: a capability both dropped and added is kept.
    assert mask(["CHOWN"], ["CHOWN"]) == DEFAULT_MASK
    assert effective_caps([], ["KILL"])[0] == "CAP_CHOWN"  # defaults first, then the adds


@pytest.mark.parametrize(("field", "names", "text"), [
    ("CapAdd", ["foo"], 'invalid CapAdd: unknown capability: "CAP_FOO"'),
    ("CapDrop", ["chown", "CAP_NOPE"], 'invalid CapDrop: unknown capability: "CAP_NOPE"'),
])
def test_unknown_capability(field: str, names: list[str], text: str) -> None:
    with pytest.raises(ValueError) as err:
        check_capabilities(field, names)
    assert str(err.value) == text


def test_known_capabilities_pass() -> None:
    check_capabilities("CapAdd", ["all", "sys_admin", "CAP_BPF"])


@pytest.mark.parametrize(("opts", "want"), [
    ([], False),
    (["no-new-privileges"], True),
    (["no-new-privileges=true"], True),
    (["no-new-privileges:1"], True),  # ':' is Docker's deprecated separator
    (["no-new-privileges", "no-new-privileges=false"], False),  # the last one wins
    (["no-new-privileges=F"], False),
])
def test_no_new_privileges(opts: list[str], want: bool) -> None:
    assert no_new_privileges(opts) is want


@pytest.mark.parametrize(("opt", "text"), [
    ("bogus", 'invalid --security-opt 1: "bogus"'),
    ("no-new-privileges=yes", 'invalid --security-opt 2: "no-new-privileges=yes"'),
    ("foo=bar", 'invalid --security-opt 2: "foo=bar"'),
    ("apparmor=unconfined", 'moorage does not support --security-opt apparmor yet: '
                            '"apparmor=unconfined"'),
])
def test_bad_security_opt(opt: str, text: str) -> None:
    with pytest.raises(ValueError) as err:
        no_new_privileges([opt])
    assert str(err.value) == text


def test_go_quote() -> None:
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'


def test_cli_flags_normalise_like_dockers_cli() -> None:
    args = build_parser().parse_args([
        "create", "--cap-add", "sys_admin", "--cap-add", "NET_ADMIN", "--cap-add", "sys_admin",
        "--cap-drop", "all", "--security-opt", "no-new-privileges", "busybox"])
    _, host = container_spec(args)
    assert host.cap_add == ("CAP_NET_ADMIN", "CAP_SYS_ADMIN")  # deduplicated and sorted
    assert host.cap_drop == ("ALL",)
    assert host.security_opt == ("no-new-privileges",)
