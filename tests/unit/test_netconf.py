"""Pure network helpers: bridge config, resource names, `-p` parsing, the container's etc files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.errors import InvalidParameter
from events import specs
from workers import hostfiles
from workers.netconf import (
    BridgeConfig,
    PortBinding,
    cid_from_netns_name,
    cid_from_tag,
    from_port_bindings,
    netns_name,
    netns_path,
    parse_publish,
    parse_publish_all,
    short_id,
    tag,
    veth_name,
)

CID = "0123456789abcdef" * 4


# --- bridge config and names ---------------------------------------------------------

def test_default_bridge_config_avoids_docker_and_the_host_network() -> None:
    cfg = BridgeConfig()
    assert (cfg.name, cfg.subnet, cfg.gateway, cfg.prefixlen) == (
        "moor0", "10.77.0.0/16", "10.77.0.1", 16)
    for taken in ("172.17.0.0/16", "192.0.2.0/24", "10.88.0.0/16", "192.168.0.0/16"):
        assert not cfg.network.overlaps(BridgeConfig(subnet=taken).network)


def test_bridge_config_from_env() -> None:
    cfg = BridgeConfig.from_env({"MOOR_BRIDGE": "moorx", "MOOR_SUBNET": "10.213.7.0/24"})
    assert (cfg.name, cfg.gateway, cfg.prefixlen) == ("moorx", "10.213.7.1", 24)
    assert cfg.mac == "02:42:0a:d5:07:01"
    assert BridgeConfig.from_env({}) == BridgeConfig()


def test_bridge_config_round_trips_the_reducers_network_spec() -> None:
    cfg = BridgeConfig(name="moorx", subnet="10.213.7.0/24")
    spec = cfg.network_spec()
    assert spec == specs.NetworkSpec(name="bridge", subnet="10.213.7.0/24",
                                     gateway="10.213.7.1", bridge="moorx")
    assert BridgeConfig.from_network_spec(spec) == cfg
    with pytest.raises(InvalidParameter, match="gateway"):
        BridgeConfig.from_network_spec(specs.NetworkSpec(
            name="bridge", subnet="10.213.7.0/24", gateway="10.213.7.9", bridge="moorx"))


@pytest.mark.parametrize("kwargs", [
    {"name": "a-name-that-is-too-long"}, {"name": "bad name"}, {"name": ""},
    {"subnet": "10.77.0.1/16"}, {"subnet": "nonsense"}, {"subnet": "10.77.0.0/31"},
    {"subnet": "fd00::/64"},
])
def test_bridge_config_rejects_bad_values(kwargs: dict[str, str]) -> None:
    with pytest.raises(InvalidParameter):
        BridgeConfig(**kwargs)


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


# --- parse_publish -------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "expected"), [
    ("80", PortBinding(container_port=80)),
    ("8080:80", PortBinding(container_port=80, host_port=8080)),
    ("127.0.0.1:8080:80", PortBinding(container_port=80, host_ip="127.0.0.1", host_port=8080)),
    ("127.0.0.1::80", PortBinding(container_port=80, host_ip="127.0.0.1")),
    ("53:53/udp", PortBinding(container_port=53, proto="udp", host_port=53)),
    ("9000:9000/SCTP", PortBinding(container_port=9000, proto="sctp", host_port=9000)),
    ("[::1]:8080:80", PortBinding(container_port=80, host_ip="::1", host_port=8080)),
    ("::1:8080:80", PortBinding(container_port=80, host_ip="::1", host_port=8080)),
    ("0:80", PortBinding(container_port=80)),
])
def test_parse_publish(spec: str, expected: PortBinding) -> None:
    assert parse_publish(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("99999:80", 'invalid port specification: "99999"'),
    ("8080:http", 'invalid port specification: "http"'),
    ("8080:0", 'invalid port specification: "0"'),
    ("abc:80", 'invalid port specification: "abc"'),
    ("8080:-1", 'invalid port specification: "-1"'),
    ("8080:80/icmp", "invalid proto: icmp"),
    ("localhost:8080:80", "invalid IP address: localhost"),
    ("8080:", "no port specified: 8080:<empty>"),
    ("8000-8001:80-82",
     "invalid ranges specified for container and host Ports: 80-82 and 8000-8001"),
    ("8000-8010:80", "host port ranges for one container port are not supported"),
    ("80-81", "port ranges publish several ports"),
    ("90-80", 'invalid port specification: "90-80"'),
])
def test_parse_publish_errors_use_dockers_text(spec: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_publish(spec)
    assert message in err.value.message
    assert err.value.status == 400


def test_parse_publish_all_expands_equal_ranges() -> None:
    assert parse_publish_all("127.0.0.1:8000-8001:80-81/udp") == [
        PortBinding(container_port=80, proto="udp", host_ip="127.0.0.1", host_port=8000),
        PortBinding(container_port=81, proto="udp", host_ip="127.0.0.1", host_port=8001),
    ]
    assert [b.container_port for b in parse_publish_all("7000-7002")] == [7000, 7001, 7002]


def test_port_binding_round_trips_dockers_host_config_shape() -> None:
    binding = parse_publish("127.0.0.1:8080:80")
    assert binding.key == "80/tcp"
    assert binding.to_docker() == ("80/tcp", specs.PortBinding(host_ip="127.0.0.1",
                                                               host_port="8080"))
    # Structs as the reducer holds them, or dicts as a job receives them.
    host_config: dict[str, tuple[specs.PortBinding | dict[str, str], ...]] = {
        "80/tcp": (specs.PortBinding(host_ip="127.0.0.1", host_port="8080"),),
        "53/udp": ({"host_ip": "", "host_port": ""},), "9/tcp": ()}
    assert from_port_bindings(host_config) == [binding,
                                               PortBinding(container_port=53, proto="udp")]
    with pytest.raises(InvalidParameter, match='invalid port specification: "70000"'):
        from_port_bindings({"80/tcp": [{"host_ip": "", "host_port": "70000"}]})


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
