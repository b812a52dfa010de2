"""docker-run-style option parsing: `-p` publish specs and HostConfig port keys."""

from __future__ import annotations

import pytest

from commands.options import parse_host_ip, parse_host_port, parse_port_key, parse_publish
from engine.errors import InvalidParameter
from events.specs import PortBinding


@pytest.mark.parametrize(("spec", "expected"), [
    ("80", ("80/tcp", PortBinding())),
    ("8080:80", ("80/tcp", PortBinding(host_port="8080"))),
    ("127.0.0.1:8080:80", ("80/tcp", PortBinding(host_ip="127.0.0.1", host_port="8080"))),
    ("127.0.0.1::80", ("80/tcp", PortBinding(host_ip="127.0.0.1"))),
    ("53:53/udp", ("53/udp", PortBinding(host_port="53"))),
    ("9000:9000/SCTP", ("9000/sctp", PortBinding(host_port="9000"))),
    ("[::1]:8080:80", ("80/tcp", PortBinding(host_ip="::1", host_port="8080"))),
    ("::1:8080:80", ("80/tcp", PortBinding(host_ip="::1", host_port="8080"))),
    ("0:80", ("80/tcp", PortBinding())),
    ("08080:080", ("80/tcp", PortBinding(host_port="8080"))),
])
def test_parse_publish(spec: str, expected: tuple[str, PortBinding]) -> None:
    assert parse_publish(spec) == [expected]


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
    ("90-80", 'invalid port specification: "90-80"'),
])
def test_parse_publish_errors_use_dockers_text(spec: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_publish(spec)
    assert message in err.value.message
    assert err.value.status == 400


def test_parse_publish_expands_equal_ranges() -> None:
    assert parse_publish("127.0.0.1:8000-8001:80-81/udp") == [
        ("80/udp", PortBinding(host_ip="127.0.0.1", host_port="8000")),
        ("81/udp", PortBinding(host_ip="127.0.0.1", host_port="8001")),
    ]
    assert [key for key, _ in parse_publish("7000-7002")] == ["7000/tcp", "7001/tcp", "7002/tcp"]


def test_host_config_parts_parse_with_the_same_rules() -> None:
    assert parse_port_key("80/tcp") == (80, "tcp")
    assert parse_port_key("53/UDP") == (53, "udp")
    assert parse_port_key("80") == (80, "tcp")
    assert (parse_host_port(""), parse_host_port("0"), parse_host_port("8080")) == (0, 0, 8080)
    assert (parse_host_ip(""), parse_host_ip("[::1]"), parse_host_ip("127.0.0.1")) == (
        "", "::1", "127.0.0.1")
    for bad, message in (("80-81/tcp", '"80-81"'), ("0/tcp", '"0"'), ("80/icmp", "icmp")):
        with pytest.raises(InvalidParameter, match=message):
            parse_port_key(bad)
    with pytest.raises(InvalidParameter, match='"8000-8001"'):
        parse_host_port("8000-8001")
    with pytest.raises(InvalidParameter, match="invalid IP address: nope"):
        parse_host_ip("nope")
