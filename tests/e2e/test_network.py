"""Bridge, netns sandbox, veth endpoint and published ports on the real kernel.

Everything runs on a test bridge `moortb<run_id>` with a private 10.213.<n>.0/24 subnet
that overlaps no host route; traffic stays on loopback and that bridge. Fixtures release
every resource even when a test fails.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from commands.options import parse_publish
from engine.errors import Conflict, MoorError
from events.specs import PortBinding
from tests.conftest import free_port, missing_capability
from workers.net import network, portmap
from workers.net.netconf import (
    BridgeConfig,
    PortMapping,
    from_port_bindings,
    netns_name,
    netns_path,
    veth_name,
)

pytestmark = pytest.mark.privileged

# A tiny TCP server for inside the namespace: greets each client with who it saw.
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"hello from {sys.argv[2]} to {peer[0]}\\n".encode())
    c.close()
"""

# A client for inside a namespace: print the first line host:port sends.
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
    print(s.makefile().readline().strip())
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host command and capture its output."""
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def host_routes() -> list[ipaddress.IPv4Network]:
    """Return the destinations of the host's IPv4 routes (main table, not default)."""
    with IPRoute() as ipr:
        return [ipaddress.IPv4Network(f"{r.get('RTA_DST')}/{r['dst_len']}", strict=False)
                for r in ipr.route("dump", family=socket.AF_INET, table=254) if r["dst_len"]]


def free_subnets(run_id: str, count: int) -> list[ipaddress.IPv4Network]:
    """Return private 10.213.<n>.0/24 subnets that overlap no host route, picked by run_id."""
    routes, start = host_routes(), int(run_id, 16)
    nets = (ipaddress.IPv4Network(f"10.213.{20 + (start + i) % 200}.0/24") for i in range(200))
    return [net for net in nets if not any(net.overlaps(r) for r in routes)][:count]


def host_address() -> str:
    """Return the IPv4 address of the interface holding the default route (eth0 here)."""
    with IPRoute() as ipr:
        for route in ipr.route("dump", family=socket.AF_INET, table=254):
            if route["dst_len"] == 0 and route.get("RTA_OIF"):
                for addr in ipr.addr("dump", index=route.get("RTA_OIF"), family=socket.AF_INET):
                    return str(addr.get("IFA_ADDRESS"))
    missing_capability("a host interface with an IPv4 default route")
    raise AssertionError("unreachable")


def fetch(host: str, port: int) -> str:
    """Connect to host:port and return the first line the server sends."""
    with socket.create_connection((host, port), timeout=3) as s, s.makefile() as f:
        return f.readline().strip()


def iptables_text() -> str:
    return sh("iptables-save").stdout


def publish(*specs: str) -> list[PortMapping]:
    """Return the mappings for `-p` specs: CLI parse, HostConfig shape, then the worker's."""
    port_bindings: dict[str, tuple[PortBinding, ...]] = {}
    for spec in specs:
        for key, binding in parse_publish(spec):
            port_bindings[key] = (*port_bindings.get(key, ()), binding)
    return from_port_bindings(port_bindings)


@pytest.fixture
def bridge(privileged: None, run_id: str) -> Iterator[BridgeConfig]:
    """A test bridge with moorage's chains, on a 10.213.<n>.0/24 no host route overlaps."""
    for tool in ("iptables", "iptables-save", "iptables-restore", "ping", "ip"):
        if shutil.which(tool) is None:
            missing_capability(f"{tool} on PATH")
    cfg = BridgeConfig(name=f"moortb{run_id}", subnet=str(free_subnets(run_id, 1)[0]))
    try:
        network.ensure_bridge(cfg)
        portmap.ensure_chains(cfg)
        yield cfg
    finally:
        portmap.release_chains(cfg)
        network.release_bridge(cfg)


@pytest.fixture
def new_cid(bridge: BridgeConfig) -> Iterator[Callable[[], str]]:
    """Hand out fresh container ids and release all their resources afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(secrets.token_hex(32))
        return made[-1]

    try:
        yield make
    finally:
        for cid in made:
            portmap.release_ports(cid)
            network.release_endpoint(cid)
            network.release_sandbox(cid)


@pytest.fixture
def servers() -> Iterator[Callable[[str, int], None]]:
    """Start TCP servers inside namespaces; kill them (by their own pid) afterwards."""
    procs: list[subprocess.Popen[str]] = []

    def start(cid: str, port: int) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns_name(cid), sys.executable, "-c", SERVER, str(port),
             cid[:12]], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout.readline().strip() == "ready", "server did not start"

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def outside(bridge: BridgeConfig, run_id: str) -> Iterator[tuple[str, str, str]]:
    """A netns standing in for another host, linked to this one by its own veth and subnet.

    Yields (netns name, this host's address on that link, the other host's address).
    """
    net = next(n for n in free_subnets(run_id, 3) if not n.overlaps(bridge.network))
    name, link = f"moortest-{run_id}", f"moorto{run_id}"
    here, there = str(net.network_address + 1), str(net.network_address + 2)
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name)
        sh("ip", "addr", "add", f"{here}/24", "dev", link)
        sh("ip", "link", "set", link, "up")
        for cmd in (("link", "set", "lo", "up"), ("addr", "add", f"{there}/24", "dev", "eth0"),
                    ("link", "set", "eth0", "up"), ("route", "add", "default", "via", here)):
            sh("ip", "-n", name, *cmd)
        yield name, here, there
    finally:
        sh("ip", "link", "del", link, check=False)
        sh("ip", "netns", "del", name, check=False)


def address(cfg: BridgeConfig, host: int) -> str:
    return str(cfg.network.network_address + host)


def up(cid: str, cfg: BridgeConfig, host: int) -> network.EndpointInfo:
    network.ensure_sandbox(cid)
    return network.ensure_endpoint(cid, cfg, address(cfg, host), cfg.prefixlen, cfg.gateway,
                                   mac=f"02:42:0a:d5:00:{host:02x}")


def test_bridge_is_up_with_the_gateway_and_localnet_routing(bridge: BridgeConfig) -> None:
    out = sh("ip", "-br", "-4", "addr", "show", "dev", bridge.name).stdout
    assert f"{bridge.gateway}/{bridge.prefixlen}" in out
    with open(f"/sys/class/net/{bridge.name}/address") as f:
        assert f.read().strip() == bridge.mac
    assert network.ensure_bridge(bridge) > 0  # idempotent
    with open(f"/proc/sys/net/ipv4/conf/{bridge.name}/route_localnet") as f:
        assert f.read().strip() == "1"
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == "1"


def test_sandbox_and_endpoint_lifecycle(bridge: BridgeConfig,
                                        new_cid: Callable[[], str]) -> None:
    cid = new_cid()
    name, veth, ip = netns_name(cid), veth_name(cid), address(bridge, 2)
    assert network.ensure_sandbox(cid) == netns_path(cid)
    assert network.ensure_sandbox(cid) == netns_path(cid)  # idempotent
    info = up(cid, bridge, 2)
    assert info == up(cid, bridge, 2)  # idempotent
    assert (info.veth, info.ip_address, info.mac_address) == (veth, ip, "02:42:0a:d5:00:02")

    assert name in sh("ip", "netns", "list").stdout
    addrs = sh("ip", "netns", "exec", name, "ip", "addr").stdout
    assert "lo:" in addrs and "inet 127.0.0.1/8" in addrs and "LOOPBACK,UP" in addrs
    assert "eth0@" in addrs and f"inet {ip}/{bridge.prefixlen}" in addrs
    assert "link/ether 02:42:0a:d5:00:02" in addrs
    route = sh("ip", "netns", "exec", name, "ip", "route", "show", "default").stdout
    assert f"default via {bridge.gateway} dev eth0" in route
    assert os.path.basename(os.readlink(f"/sys/class/net/{veth}/master")) == bridge.name
    with open(f"/sys/class/net/{bridge.name}/address") as f:
        assert f.read().strip() == bridge.mac  # a joining port does not change the gateway MAC
    assert sh("ip", "netns", "exec", name, "ping", "-c1", "-W1", bridge.gateway,
              check=False).returncode == 0
    assert cid in network.list_sandboxes() and cid in network.list_endpoints()

    network.release_endpoint(cid)
    assert not os.path.exists(f"/sys/class/net/{veth}")
    network.release_sandbox(cid)
    assert not os.path.exists(netns_path(cid)) and name not in sh("ip", "netns", "list").stdout
    assert cid not in network.list_sandboxes() and cid not in network.list_endpoints()
    network.release_endpoint(cid)  # already gone is success
    network.release_sandbox(cid)
    # The names are reusable at once (the veth went before the namespace).
    assert up(cid, bridge, 2).ip_address == ip


def test_two_containers_reach_each_other_over_the_bridge(bridge: BridgeConfig,
                                                         new_cid: Callable[[], str]) -> None:
    a, b = new_cid(), new_cid()
    up(a, bridge, 2)
    up(b, bridge, 3)
    assert sh("ip", "netns", "exec", netns_name(a), "ping", "-c1", "-W1", address(bridge, 3),
              check=False).returncode == 0


def test_published_port_answers_on_loopback_and_the_host_address(
        bridge: BridgeConfig, new_cid: Callable[[], str],
        servers: Callable[[str, int], None]) -> None:
    cid, cport, hport = new_cid(), 8080, free_port()
    info = up(cid, bridge, 2)
    servers(cid, cport)
    ports = publish(f"{hport}:{cport}")
    assert portmap.ensure_ports(cid, info.ip_address, ports, bridge) == ports
    rules = iptables_text().count(cid)
    assert portmap.ensure_ports(cid, info.ip_address, ports, bridge) == ports
    assert iptables_text().count(cid) == rules == 1  # one DNAT rule; no duplicate

    # From loopback the container sees the bridge gateway (masqueraded 127/8 source).
    assert fetch("127.0.0.1", hport) == f"hello from {cid[:12]} to {bridge.gateway}"
    host_ip = host_address()
    assert fetch(host_ip, hport) == f"hello from {cid[:12]} to {host_ip}"
    assert portmap.list_port_rules()[cid] == [
        portmap.PortRule(binding=ports[0], container_ip=info.ip_address)]

    portmap.release_ports(cid)
    assert cid not in iptables_text() and cid not in portmap.list_port_rules()
    with pytest.raises(OSError):
        fetch("127.0.0.1", hport)
    portmap.release_ports(cid)  # already gone is success


def test_published_port_answers_another_host_through_forward(
        bridge: BridgeConfig, new_cid: Callable[[], str],
        servers: Callable[[str, int], None], outside: tuple[str, str, str]) -> None:
    other_host, here, there = outside
    cid, hport = new_cid(), free_port()
    info = up(cid, bridge, 2)
    servers(cid, 8080)
    portmap.ensure_ports(cid, info.ip_address, publish(f"{hport}:8080"), bridge)
    got = sh("ip", "netns", "exec", other_host, sys.executable, "-c", CLIENT, here, str(hport))
    assert got.stdout.strip() == f"hello from {cid[:12]} to {there}"  # no masquerade inbound
    # It came in through PREROUTING's DNAT and was let through by the bridge's DNAT rule.
    listing = sh("iptables", "-w", "-v", "-x", "-n", "-L", portmap.FORWARD_CHAIN).stdout
    [dnat_rule] = [line for line in listing.splitlines()
                   if "ctstate DNAT" in line and bridge.name in line]
    assert int(dnat_rule.split()[0]) > 0


def test_port_bound_to_loopback_only_and_ephemeral_ports(
        bridge: BridgeConfig, new_cid: Callable[[], str],
        servers: Callable[[str, int], None]) -> None:
    cid = new_cid()
    info = up(cid, bridge, 2)
    servers(cid, 9000)
    wanted = publish("127.0.0.1::9000", "127.0.0.1:0:9000")  # two ways to say "ephemeral"
    [used] = portmap.ensure_ports(cid, info.ip_address, wanted, bridge)
    assert used.host_ip == "127.0.0.1" and used.host_port > 0
    assert portmap.ensure_ports(cid, info.ip_address, wanted, bridge) == [used]  # same port
    assert fetch("127.0.0.1", used.host_port) == f"hello from {cid[:12]} to {bridge.gateway}"
    with pytest.raises(OSError):
        fetch(host_address(), used.host_port)  # not published on the other addresses


def test_port_conflicts_are_refused(bridge: BridgeConfig, new_cid: Callable[[], str]) -> None:
    a, b, hport = new_cid(), new_cid(), free_port()
    portmap.ensure_ports(a, address(bridge, 2), publish(f"0.0.0.0:{hport}:80"), bridge)
    # 0.0.0.0 covers 127.0.0.1; Docker's message names the address asked for.
    with pytest.raises(Conflict, match=f"Bind for 127.0.0.1:{hport} failed: port is already"):
        portmap.ensure_ports(b, address(bridge, 3), publish(f"127.0.0.1:{hport}:80"), bridge)
    # Same port over another protocol is fine.
    portmap.ensure_ports(b, address(bridge, 3), publish(f"{hport}:80/udp"), bridge)
    udp = PortMapping(container_port=80, proto="udp", host_port=hport)
    with socket.socket() as listener:  # a host process owns this port
        listener.bind(("0.0.0.0", 0))
        listener.listen(1)
        taken = listener.getsockname()[1]
        with pytest.raises(Conflict, match=f"Bind for 0.0.0.0:{taken} failed"):
            portmap.ensure_ports(b, address(bridge, 3), publish(f"{taken}:80"), bridge)
    # The refused requests left nothing: b still publishes only its udp port.
    assert [r.binding for r in portmap.list_port_rules()[b]] == [udp]


def test_rule_changes_in_one_batch_hit_exactly_the_right_rules(
        bridge: BridgeConfig, new_cid: Callable[[], str]) -> None:
    a, b = new_cid(), new_cid()
    p1, p2, p3 = (PortMapping(container_port=c, host_port=free_port()) for c in (81, 82, 83))
    portmap.ensure_ports(a, address(bridge, 2),
                         publish(f"{p1.host_port}:81", f"{p2.host_port}:82"), bridge)
    portmap.ensure_ports(b, address(bridge, 3), publish(f"{p3.host_port}:83"), bridge)
    # a drops p1 while the bridge's rules drift (same device, another subnet): deletions by
    # rule number in both tables, all computed from one snapshot.
    drifted = BridgeConfig(name=bridge.name, subnet="10.213.250.0/30")
    portmap.ensure_ports(a, address(bridge, 2), publish(f"{p2.host_port}:82"), drifted)
    rules = portmap.list_port_rules()
    assert [r.binding for r in rules[a]] == [p2] and [r.binding for r in rules[b]] == [p3]
    text = iptables_text()
    assert text.count(a) == 1 and text.count(b) == 1
    assert "10.213.250.0/30" in text and f"-s {bridge.subnet}" not in text
    portmap.ensure_chains(bridge)  # drift back
    assert "10.213.250.0/30" not in iptables_text()
    portmap.release_ports(a)
    assert [r.binding for r in portmap.list_port_rules()[b]] == [p3]
    assert iptables_text().count(b) == 1


def test_ensure_refuses_what_does_not_match_and_undoes_its_own_work(
        bridge: BridgeConfig, new_cid: Callable[[], str], run_id: str) -> None:
    cid = new_cid()
    up(cid, bridge, 2)
    with pytest.raises(Conflict, match="expected"):
        network.ensure_endpoint(cid, bridge, address(bridge, 9), bridge.prefixlen, bridge.gateway)

    other = new_cid()
    network.ensure_sandbox(other)
    with pytest.raises(MoorError):  # the gateway is off-link: the route cannot be added
        network.ensure_endpoint(other, bridge, address(bridge, 3), bridge.prefixlen,
                                "10.254.254.254")
    assert not os.path.exists(f"/sys/class/net/{veth_name(other)}")

    not_a_bridge = BridgeConfig(name=f"moortx{run_id}", subnet="10.213.250.0/30")
    sh("ip", "link", "add", not_a_bridge.name, "type", "veth", "peer", "name", f"moorty{run_id}")
    try:
        with pytest.raises(Conflict, match="not a moorage bridge"):
            network.ensure_bridge(not_a_bridge)
        with pytest.raises(Conflict):
            network.release_bridge(not_a_bridge)
    finally:
        sh("ip", "link", "del", not_a_bridge.name, check=False)


def test_a_bridge_gone_or_down_since_it_was_ensured_is_noticed(
        bridge: BridgeConfig, new_cid: Callable[[], str]) -> None:
    """A start trusts a bridge it ensured lately; ensure_endpoint must catch it gone."""
    from workers import saga

    cid = new_cid()
    network.ensure_sandbox(cid)
    try:
        saga._ensure_bridge_once(bridge, force=True)
        sh("ip", "link", "set", bridge.name, "down")
        with pytest.raises(network.BridgeMissing):
            up(cid, bridge, 2)
        sh("ip", "link", "del", bridge.name)
        with pytest.raises(network.BridgeMissing):
            up(cid, bridge, 2)
        assert not os.path.exists(f"/sys/class/net/{veth_name(cid)}")
        saga._ensure_bridge_once(bridge)  # ensured lately: trusted, not re-checked
        assert not os.path.exists(f"/sys/class/net/{bridge.name}")
        saga._ensure_bridge_once(bridge, force=True)  # what the saga does on BridgeMissing
        assert up(cid, bridge, 2).ip_address == address(bridge, 2)
    finally:
        saga.forget_bridges()


def test_interrupted_sandbox_create_is_redone(bridge: BridgeConfig,
                                              new_cid: Callable[[], str]) -> None:
    cid = new_cid()
    os.makedirs(os.path.dirname(netns_path(cid)), exist_ok=True)
    open(netns_path(cid), "w").close()  # the placeholder a crash before the mount leaves
    assert network.ensure_sandbox(cid) == netns_path(cid)
    assert "eth0" not in sh("ip", "netns", "exec", netns_name(cid), "ip", "-br", "link").stdout
    assert cid in network.list_sandboxes()


def test_full_release_leaves_nothing(bridge: BridgeConfig, new_cid: Callable[[], str]) -> None:
    cid = new_cid()
    info = up(cid, bridge, 2)
    portmap.ensure_ports(cid, info.ip_address, publish(f"{free_port()}:80"), bridge)
    assert cid in iptables_text()

    portmap.release_ports(cid)
    network.release_endpoint(cid)
    network.release_sandbox(cid)
    portmap.release_chains(bridge)
    network.release_bridge(bridge)

    assert cid not in iptables_text()
    assert f"moor-bridge:{bridge.name}" not in iptables_text()
    assert netns_name(cid) not in sh("ip", "netns", "list").stdout
    links = sh("ip", "-br", "link").stdout
    assert veth_name(cid) not in links and bridge.name not in links
