"""Pure network helpers: bridge config, resource names, port mappings, the container's etc files."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from engine.config import default_network
from engine.errors import InvalidParameter
from events import specs
from workers.net import hostfiles
from workers.net.netconf import (
    BridgeConfig,
    PortMapping,
    cid_from_netns_name,
    cid_from_tag,
    from_port_bindings,
    netns_name,
    netns_path,
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


def test_names_derive_from_the_container_id() -> None:
    assert short_id(CID) == "0123456789ab"
    assert veth_name(CID) == "mv0123456789ab" and len(veth_name(CID)) <= 15
    assert netns_name(CID) == "moor-" + CID
    assert netns_path(CID) == "/run/netns/moor-" + CID
    assert tag(CID) == "moor:" + CID
    assert cid_from_netns_name(netns_name(CID)) == CID
    assert cid_from_tag(tag(CID)) == CID
    assert cid_from_netns_name("moor-abc") is None and cid_from_netns_name("other") is None
    assert cid_from_tag("moor-bridge:moor0") is None and cid_from_tag(None) is None
    with pytest.raises(InvalidParameter):
        veth_name("ABC")


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
