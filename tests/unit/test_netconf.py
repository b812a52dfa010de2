"""Pure network helpers: bridge config, resource names, port mappings, the container's etc files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec
import pytest

from engine import config
from engine.config import default_network
from engine.errors import InvalidParameter
from events import specs
from workers.net import hostfiles
from workers.net.netconf import (
    LEGACY,
    BridgeConfig,
    Chains,
    Owner,
    PortMapping,
    bridge_tag,
    chains,
    cid_from_netns_name,
    cid_from_tag,
    engine_of_chain,
    from_port_bindings,
    netns_name,
    netns_path,
    parse_bridge_tag,
    parse_netns_name,
    parse_tag,
    short_id,
    tag,
    to_port_bindings,
    veth_name,
)

CID = "0123456789abcdef" * 4


# --- bridge config and names ---------------------------------------------------------

def test_default_bridge_config_avoids_docker_and_the_host_network(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOOR_SUBNET", raising=False)
    monkeypatch.setenv("MOOR_BRIDGE", "")  # empty counts as unset
    cfg = BridgeConfig.from_network_spec(default_network())
    assert (cfg.name, cfg.subnet, cfg.gateway, cfg.prefixlen) == (
        "moor0", "10.77.0.0/16", "10.77.0.1", 16)
    for taken in ("172.17.0.0/16", "192.0.2.0/24", "10.88.0.0/16", "192.168.0.0/16",
                  "10.96.0.0/12", "10.244.0.0/16"):
        assert not cfg.network.overlaps(BridgeConfig(name="x", subnet=taken).network)


def test_bridge_config_from_the_env_through_the_engines_network_spec(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOR_BRIDGE", "moorx")
    monkeypatch.setenv("MOOR_SUBNET", "10.213.7.0/24")
    spec = default_network()
    assert spec == specs.NetworkSpec(name="bridge", subnet="10.213.7.0/24",
                                     gateway="10.213.7.1", bridge="moorx")
    cfg = BridgeConfig.from_network_spec(spec)
    assert cfg == BridgeConfig(name="moorx", subnet="10.213.7.0/24")
    assert (cfg.gateway, cfg.prefixlen, cfg.mac) == ("10.213.7.1", 24, "02:42:0a:d5:07:01")
    with pytest.raises(InvalidParameter, match="gateway"):
        BridgeConfig.from_network_spec(specs.NetworkSpec(
            name="bridge", subnet="10.213.7.0/24", gateway="10.213.7.9", bridge="moorx"))
    monkeypatch.setenv("MOOR_SUBNET", "10.213.7.1/24")
    with pytest.raises(InvalidParameter, match="MOOR_SUBNET"):
        default_network()


@pytest.mark.parametrize("kwargs", [
    {"name": "a-name-that-is-too-long"}, {"name": "bad name"}, {"name": ""},
    {"subnet": "10.77.0.1/16"}, {"subnet": "nonsense"}, {"subnet": "10.77.0.0/31"},
    {"subnet": "fd00::/64"},
])
def test_bridge_config_rejects_bad_values(kwargs: dict[str, str]) -> None:
    with pytest.raises(InvalidParameter):
        BridgeConfig(**{"name": "moor0", "subnet": "10.77.0.0/16", **kwargs})


def test_names_derive_from_the_engine_and_the_container_id() -> None:
    assert short_id(CID) == "0123456789ab"
    assert veth_name(CID) == "mv0123456789ab" and len(veth_name(CID)) <= 15
    assert netns_name(CID, "e1") == "moor-e1-" + CID
    assert netns_path(CID, "e1") == "/run/netns/moor-e1-" + CID
    assert tag(CID, "e1") == "moor:e1:" + CID
    assert bridge_tag("e1") == "moor:bridge:e1"
    assert chains("e1") == Chains("MOOR-DNAT-e1", "MOOR-POSTROUTING-e1", "MOOR-FORWARD-e1")
    assert cid_from_netns_name(netns_name(CID, "e1"), "e1") == CID
    assert cid_from_tag(tag(CID, "e1"), "e1") == CID
    assert cid_from_netns_name("moor-abc", "e1") is None
    assert cid_from_netns_name("other", "e1") is None
    assert cid_from_tag("moor-bridge:moor0", "e1") is None and cid_from_tag(None, "e1") is None
    with pytest.raises(InvalidParameter):
        veth_name("ABC")


def test_names_made_before_engine_ids_are_the_legacy_engines() -> None:
    # What earlier versions wrote, byte for byte: upgraded engines still find them.
    assert netns_name(CID, LEGACY) == "moor-" + CID
    assert tag(CID, LEGACY) == "moor:" + CID
    assert bridge_tag(LEGACY) == "moor:bridge"
    assert chains(LEGACY) == Chains("MOOR-DNAT", "MOOR-POSTROUTING", "MOOR-FORWARD")
    assert parse_netns_name("moor-" + CID) == Owner(LEGACY, CID)
    assert parse_tag("moor:" + CID) == Owner(LEGACY, CID)
    assert parse_bridge_tag("moor:bridge") == LEGACY
    assert engine_of_chain("MOOR-DNAT") == LEGACY


def test_one_engines_names_are_not_anothers() -> None:
    for name in (netns_name(CID, "e1"), netns_name(CID, LEGACY)):
        assert cid_from_netns_name(name, "e2") is None
    for text in (tag(CID, "e1"), tag(CID, LEGACY)):
        assert cid_from_tag(text, "e2") is None
    assert parse_netns_name(netns_name(CID, "a-b_1")) == Owner("a-b_1", CID)
    assert parse_tag(tag(CID, "a-b_1")) == Owner("a-b_1", CID)
    assert parse_bridge_tag(bridge_tag("e2")) == "e2"
    assert [engine_of_chain(c) for c in chains("e2")] == ["e2"] * 3
    for junk in ("moor--" + CID, "moor-E1-" + CID, "moor-e1_" + CID, "moor-e1-" + CID[1:],
                 "moor-twelve-chars-" + CID):
        assert parse_netns_name(junk) is None, junk
    for junk in ("moor:e1:" + CID + ":x", "moor::" + CID, "moor:bridge:e1", "moor:e1"):
        assert parse_tag(junk) is None, junk
    assert parse_bridge_tag("moor:bridge:") is None and parse_bridge_tag("moor:" + CID) is None
    assert engine_of_chain("MOOR-DNAT-") is None and engine_of_chain("DOCKER") is None


def test_names_use_this_engines_id_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOR_ENGINE_ID", "e7")
    assert (netns_name(CID), tag(CID), bridge_tag(), chains().dnat) == (
        "moor-e7-" + CID, "moor:e7:" + CID, "moor:bridge:e7", "MOOR-DNAT-e7")
    assert cid_from_tag("moor:e7:" + CID) == CID and cid_from_tag("moor:" + CID) is None


def test_the_engine_id_derives_from_the_data_root_and_the_journal(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MOOR_ENGINE_ID", raising=False)
    monkeypatch.setenv("MOOR_DATA_ROOT", str(tmp_path / "a"))
    monkeypatch.setenv("MOOR_PREFIX", "moor:v1")
    first = config.engine_id()
    assert re.fullmatch(r"[0-9a-f]{8}", first)
    assert first == config.derive_engine_id(str(tmp_path / "a"), "moor:v1", "0")
    # One directory, two spellings: one engine.
    (tmp_path / "link").symlink_to(tmp_path)
    assert config.derive_engine_id(str(tmp_path / "link" / "a"), "moor:v1") == first
    # Another data root (a second `moor up`, same default prefix) or another journal.
    assert config.derive_engine_id(str(tmp_path / "b"), "moor:v1") != first
    assert config.derive_engine_id(str(tmp_path / "a"), "moor:v2") != first
    assert config.derive_engine_id(str(tmp_path / "a"), "moor:v1", "1") != first
    # Another engine's, from its worker context (reconcile of a context not this process's).
    assert config.engine_id(str(tmp_path / "b"), "p", "0") == config.derive_engine_id(
        str(tmp_path / "b"), "p")
    monkeypatch.setenv("MOOR_ENGINE_ID", "prod")
    assert config.engine_id() == "prod"
    assert config.cgroup_parent() == "moorage/prod"
    monkeypatch.setenv("MOOR_CGROUP_PARENT", "/custom/")
    assert config.cgroup_parent() == "custom"


@pytest.mark.parametrize("bad", ["", "UPPER", "-lead", "twelve-chars", "a:b", "a/b", "a b"])
def test_engine_ids_that_cannot_name_host_resources_are_refused(
        monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    with pytest.raises(InvalidParameter):
        config.validate_engine_id(bad)
    if bad:
        monkeypatch.setenv("MOOR_ENGINE_ID", bad)
        with pytest.raises(InvalidParameter):
            config.engine_id()
    with pytest.raises(InvalidParameter):
        netns_name(CID, bad or "x" * 12)


def test_the_longest_names_fit_the_kernels_limits() -> None:
    longest = "e" * 11
    assert max(len(c) for c in chains(longest)) <= 28  # iptables chain names
    assert len(netns_name(CID, longest)) <= 255  # a file name
    assert len(tag(CID, longest)) <= 255  # IFALIASZ - 1, and an iptables comment (256)


# --- port mappings -----------------------------------------------------------------

def test_port_bindings_flatten_to_mappings_and_back() -> None:
    host_config = {
        "80/tcp": (specs.PortBinding(host_ip="127.0.0.1", host_port="8080"),
                   specs.PortBinding(host_ip="127.0.0.1", host_port="8080")),  # dropped
        "53/udp": (specs.PortBinding(host_ip="0.0.0.0", host_port="0"),),
        "9/tcp": (),  # exposed only: publishes nothing
    }
    mappings = from_port_bindings(host_config)
    assert mappings == [
        PortMapping(container_port=80, host_ip="127.0.0.1", host_port=8080),
        PortMapping(container_port=53, proto="udp"),
    ]
    assert mappings[0].key == "80/tcp"
    assert to_port_bindings(mappings) == {
        "80/tcp": (specs.PortBinding(host_ip="127.0.0.1", host_port="8080"),),
        "53/udp": (specs.PortBinding(),),
    }


@pytest.mark.parametrize(("key", "binding", "message"), [
    ("80/tcp", specs.PortBinding(host_port="70000"), 'invalid port specification: "70000"'),
    ("80-81/tcp", specs.PortBinding(), 'invalid port specification: "80-81"'),
    ("80/icmp", specs.PortBinding(), "invalid proto: icmp"),
    ("80/tcp", specs.PortBinding(host_ip="nope"), "invalid IP address: nope"),
    ("80/tcp", specs.PortBinding(host_ip="::1"), "IPv6 port bindings are not supported"),
    ("80/tcp", specs.PortBinding(host_ip="1.2.3.4 -j ACCEPT"), "invalid IP address"),
])
def test_port_bindings_are_checked_before_they_become_iptables_tokens(
        key: str, binding: specs.PortBinding, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        from_port_bindings({key: (binding,)})


def test_a_port_mapping_holds_its_invariants_however_it_is_built() -> None:
    for bad in ({"proto": "tcp -j ACCEPT"}, {"container_port": 0}, {"host_port": 65536},
                {"host_ip": "0.0.0.0"}, {"host_ip": "::1"}, {"host_ip": "010.0.0.1"}):
        with pytest.raises(InvalidParameter, match="invalid port mapping"):
            PortMapping(**{"container_port": 80, **bad})  # type: ignore[arg-type]
        with pytest.raises(InvalidParameter, match="invalid port mapping"):
            msgspec.structs.replace(PortMapping(container_port=80), **bad)


# --- hostfiles -----------------------------------------------------------------------

def test_hosts_has_localhost_lines_and_the_container() -> None:
    text = hostfiles.render_hosts("0123456789ab", "10.77.0.2")
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in lines
    assert lines[-1] == "10.77.0.2\t0123456789ab"
    assert "0123456789ab" not in hostfiles.render_hosts("0123456789ab", None)


def test_resolv_conf_drops_loopback_and_ipv6_nameservers() -> None:
    host = ("# generated\nsearch example.test\nnameserver 127.0.0.53\nnameserver ::1\n"
            "nameserver 2001:db8::1\nnameserver 10.255.255.53\noptions edns0 trust-ad\n")
    assert hostfiles.render_resolv_conf(host) == (
        "# generated\nsearch example.test\nnameserver 10.255.255.53\noptions edns0 trust-ad\n")


def test_resolv_conf_falls_back_to_dockers_default_dns() -> None:
    out = hostfiles.render_resolv_conf("search lan\nnameserver 127.0.0.1\n")
    assert out == "search lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    assert hostfiles.render_resolv_conf("") == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def test_write_hostfiles_into_the_container_dir(tmp_path: Path) -> None:
    source = tmp_path / "host-resolv.conf"
    source.write_text("nameserver 127.0.0.11\nnameserver 10.1.2.3\n")
    target = tmp_path / "ctr"
    files = hostfiles.write_hostfiles(str(target), CID, "10.77.0.9",
                                      resolv_source=str(source))
    assert Path(files.hostname).read_text() == "0123456789ab\n"
    assert Path(files.hosts).read_text().endswith("10.77.0.9\t0123456789ab\n")
    assert Path(files.resolv_conf).read_text() == "nameserver 10.1.2.3\n"
    assert oct(os.stat(files.hosts).st_mode & 0o777) == "0o644"
    # Idempotent, no temp files left behind, and an explicit hostname wins.
    again = hostfiles.write_hostfiles(str(target), CID, "10.77.0.9", hostname="web",
                                      resolv_source=str(source))
    assert again == files
    assert Path(files.hostname).read_text() == "web\n"
    assert sorted(p.name for p in target.iterdir()) == ["hostname", "hosts", "resolv.conf"]
