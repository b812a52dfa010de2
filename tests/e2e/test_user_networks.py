"""User-defined networks, embedded DNS, isolation, connect/disconnect, `container:` mode,
legacy links and their cleanup, driven with the real docker CLI against `moor api`
(issue #11's networks half).

Every name carries the engine's token; subnets are private 10.213.x.0/24 ones that overlap
no host route. Each test removes its containers and then its networks (in that order: a
network with endpoints cannot go); the engine fixture proves every container left nothing
behind, and the module's last test proves the networks left nothing either (bridges,
veths, namespaces, this engine's iptables rules, mounts, the resolver's listeners) and
that the journal replays to the live state.

Debian 12's busybox-static `wget` segfaults on this host whatever the URL (`busybox wget
http://127.0.0.1:1/` exits 139 outside any container), so HTTP between containers is
`printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc HOST 80` against busybox `httpd`; names are resolved
with busybox's nslookup (its own DNS client, against 127.0.0.11) or read from /etc/hosts.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from events import model as e
from tests.e2e.conftest import Engine, host_engine_id, host_routes, proc_env, wait_for
from tests.e2e.dockerapi import DockerApi, cid_of, inspect, load_busybox, start_api, track_created

pytestmark = pytest.mark.privileged

# The page every server writes before it listens; `httpd -h /` serves it from the rootfs.
SERVE = "echo {body} > /index.html && exec httpd -f -p 80 -h /"


# --- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def netapi(moor_engine: Engine) -> Iterator[DockerApi]:
    yield from start_api(moor_engine, "usernet-api")


@pytest.fixture(scope="module")
def baseline(moor_engine: Engine) -> dict[str, list[str]]:
    """What the host holds for this engine before any network test (the default bridge's)."""
    return host_state(moor_engine)


@pytest.fixture
def dk(engine: Engine, netapi: DockerApi, baseline: dict[str, list[str]]
       ) -> Iterator[DockerApi]:
    yield from track_created(engine, netapi)


@pytest.fixture(scope="module")
def image(netapi: DockerApi) -> str:
    return load_busybox(netapi, "net")


@pytest.fixture
def nets(dk: DockerApi, engine: Engine) -> Iterator[list[str]]:
    """Names of networks the test creates; afterwards its containers go, then its networks."""
    made: list[str] = []
    yield made
    errors = engine.remove_all()
    for name in made:
        done = dk.docker("network", "rm", name, check=False)
        if done.returncode != 0 and "not found" not in done.stderr:
            errors.append(done.stderr)
    assert not errors, errors


# --- helpers -------------------------------------------------------------------------------

def subnets(token: str, count: int, offset: int = 0) -> list[str]:
    routes = host_routes()
    start = int(token, 16) + offset
    out = []
    for i in range(200):
        net = ipaddress.IPv4Network(f"10.213.{(start + i) % 200 + 30}.0/24")
        if not any(net.overlaps(r) for r in routes):
            out.append(str(net))
        if len(out) == count:
            return out
    raise AssertionError("no free 10.213.x.0/24")


def host_state(engine: Engine) -> dict[str, list[str]]:
    """List what the host holds for this engine: links, namespaces, rules, mounts, resolver."""
    eid = host_engine_id(engine)
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True,
                           check=True).stdout
    # The default bridge's chains, hooks and rules stay until the session's teardown.
    base = tuple(f"MOOR-{c}-{eid}" for c in ("DNAT", "POSTROUTING", "FORWARD"))
    root = os.path.realpath(engine.data_root)
    with open("/proc/mounts") as f:
        mounts = sorted(line.split()[1] for line in f if root in line)
    resolvers = [pid for pid in os.listdir("/proc") if pid.isdigit()
                 and proc_env(int(pid)).get("MOOR_ENGINE_ID") == eid
                 and b"workers.net.dnsd" in _cmdline(int(pid))]
    return {
        # user bridges (mb*) and live-connected veths (mx*) of any engine: none of ours may
        # stay, and the leftovers of other engines' runs are not ours to judge
        "links": sorted(line.split(":")[1].strip().split("@")[0]
                        for line in links.splitlines()
                        if line.split(":")[1].strip().startswith(("mb", "mx"))
                        and eid in line),
        "netns": sorted(line.split()[0] for line in netns.splitlines() if eid in line),
        "iptables": sorted(line for line in rules.splitlines() if eid in line
                           and f"moor-bridge:{engine.bridge}" not in line
                           and line.split()[0] not in {f":{c}" for c in base}
                           and line.split()[-1] not in base),
        "mounts": mounts,
        "resolvers": resolvers,
        "dns-socket": [p for p in [os.path.join(engine.data_root, "dns", "control.sock")]
                       if os.path.exists(p)],
    }


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def run_d(dk: DockerApi, *args: str) -> str:
    return cid_of(dk.docker("run", "-d", *args))


def sh_in(dk: DockerApi, ref: str, script: str, check: bool = True
          ) -> subprocess.CompletedProcess[str]:
    return dk.docker("exec", ref, "sh", "-c", script, check=check)


def resolve(dk: DockerApi, ref: str, name: str) -> str:
    out = sh_in(dk, ref, f"nslookup {name} 127.0.0.11").stdout
    addrs = [line.split()[-1] for line in out.splitlines()
             if line.startswith("Address") and "127.0.0.11" not in line]
    assert addrs, out
    return addrs[-1]


def fetch(dk: DockerApi, ref: str, addr: str) -> tuple[int, str]:
    """GET / from addr:80 inside the container: (nc's exit status, the body or "")."""
    done = sh_in(dk, ref, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {addr} 80",
                 check=False)
    head, _, body = done.stdout.replace("\r", "").partition("\n\n")
    return done.returncode, body.strip() if head.startswith("HTTP/1.") else ""


def serving(dk: DockerApi, ref: str, addr: str, body: str) -> None:
    """Wait until the server answers (httpd listens a moment after `docker run` returns)."""
    wait_for(lambda: fetch(dk, ref, addr)[1] == body, 15, f"{addr}:80 to serve {body}",
             lambda: repr(fetch(dk, ref, addr)))


def host_fetch(addr: str) -> str:
    """GET / from the host (not forwarded: the isolation chains do not see it)."""
    with socket.create_connection((addr, 80), timeout=3) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.decode().replace("\r", "").partition("\n\n")[2].strip()


def network_feed(dk: DockerApi, network: str) -> list[str]:
    """The actions `docker events` shows for a network over the last five minutes."""
    until = f"{time.time() + 0.5:.3f}"  # explicit: the CLI's "0s" drops the fraction
    return dk.docker("events", "--since", "5m", "--until", until, "--filter", "type=network",
                     "--filter", f"network={network}", "--format", "{{.Action}}").stdout.split()


def events_of(engine: Engine, kind: type, after: str) -> list[e.EventRecord]:
    return [r for _, r in engine.events(after=after) if isinstance(r.event, kind)]


# --- tests ---------------------------------------------------------------------------------

def test_dns_by_name_and_alias_http_and_isolation(dk: DockerApi, engine: Engine, image: str,
                                                  nets: list[str]) -> None:
    t = engine.token
    app, other = f"appnet{t}", f"othernet{t}"
    sub_app, sub_other = subnets(t, 2)
    nets += [app, other]
    out = dk.docker("network", "create", "--subnet", sub_app, app).stdout.strip()
    assert len(out) == 64
    dk.docker("network", "create", "--subnet", sub_other, "--label", "k=v", other)
    doc = json.loads(dk.docker("network", "inspect", app).stdout)[0]
    assert doc["Name"] == app and doc["Driver"] == "bridge" and doc["Scope"] == "local"
    assert doc["IPAM"]["Config"] == [{"Subnet": sub_app,
                                      "Gateway": sub_app.replace("0/24", "1")}]
    listed = dk.docker("network", "ls", "--filter", "label=k=v", "--format",
                       "{{.Name}}").stdout.split()
    assert listed == [other]
    err = dk.docker("network", "create", "--subnet", sub_app, f"dup{t}", check=False)
    assert "Pool overlaps with other one on this address space" in err.stderr

    srv = run_d(dk, "--name", f"srv{t}", "--network", app, "--network-alias", f"web{t}",
                image, "sh", "-c", SERVE.format(body="hello-srv"))
    static_ip = sub_app.replace("0/24", "77")
    cli = run_d(dk, "--name", f"cli{t}", "--network", app, "--ip", static_ip, image,
                "sleep", "300")
    far = run_d(dk, "--name", f"far{t}", "--network", other, image, "sh", "-c",
                SERVE.format(body="hello-far"))
    dflt = run_d(dk, "--name", f"dflt{t}", image, "sh", "-c", SERVE.format(body="hello-dflt"))
    assert inspect(dk, cli)["NetworkSettings"]["Networks"][app]["IPAddress"] == static_ip
    srv_ip = inspect(dk, srv)["NetworkSettings"]["Networks"][app]["IPAddress"]
    far_ip = inspect(dk, far)["NetworkSettings"]["Networks"][other]["IPAddress"]
    dflt_ip = inspect(dk, dflt)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert sh_in(dk, cli, "cat /etc/resolv.conf").stdout.startswith("nameserver 127.0.0.11")
    for name in (f"srv{t}", f"web{t}", srv[:12], f"srv{t}.{app}".upper()):
        assert resolve(dk, cli, name) == srv_ip, name
    assert resolve(dk, srv, f"cli{t}") == static_ip
    # By name and by alias: the address the resolver gives answers with srv's page, every
    # time (the first fetch once came back empty: httpd was not listening yet).
    serving(dk, cli, resolve(dk, cli, f"srv{t}"), "hello-srv")
    for _ in range(3):
        assert fetch(dk, cli, resolve(dk, cli, f"web{t}")) == (0, "hello-srv")
    # Anything else goes to the host's resolvers (an answer or NXDOMAIN, never a hang).
    assert sh_in(dk, cli, "nslookup nonexistent.invalid 127.0.0.11", check=False).returncode \
        in (0, 1)
    # The default bridge has no embedded DNS.
    assert "127.0.0.11" not in sh_in(dk, dflt, "cat /etc/resolv.conf").stdout

    # Isolation. The servers answer the host (not forwarded, so not isolated) ...
    for addr, body in ((srv_ip, "hello-srv"), (far_ip, "hello-far"), (dflt_ip, "hello-dflt")):
        wait_for(lambda a=addr, b=body: host_fetch(a) == b, 15, f"{addr} to serve the host")
    # ... but another network's name does not resolve and its addresses do not answer:
    # user network <-> user network, and the default bridge <-> a user network, both ways.
    assert sh_in(dk, far, f"nslookup srv{t} 127.0.0.11", check=False).returncode != 0
    for ref, addr in ((far, srv_ip), (cli, far_ip), (dflt, srv_ip), (cli, dflt_ip)):
        status, body = fetch(dk, ref, addr)
        assert status != 0 and body == "", (ref[:12], addr, status, body)

    # Removing a network in use is refused with Docker's text.
    err = dk.docker("network", "rm", app, check=False)
    assert err.returncode != 0 and "has active endpoints" in err.stderr


def test_connect_and_disconnect_a_running_container(dk: DockerApi, engine: Engine, image: str,
                                                    nets: list[str]) -> None:
    t = engine.token
    app = f"conn{t}"
    (sub,) = subnets(t, 1, offset=7)
    nets.append(app)
    dk.docker("network", "create", "--subnet", sub, app)
    srv = run_d(dk, "--name", f"csrv{t}", "--network", app, image, "sh", "-c",
                SERVE.format(body="hello-conn"))
    srv_ip = inspect(dk, srv)["NetworkSettings"]["Networks"][app]["IPAddress"]
    mover = run_d(dk, "--name", f"mover{t}", image, "sleep", "300")
    assert fetch(dk, mover, srv_ip)[1] == ""  # on the default bridge: isolated
    cursor = engine.last_event_id()

    dk.docker("network", "connect", "--alias", f"moved{t}", app, mover)
    ifaces = sh_in(dk, mover, "ip -o -4 addr show").stdout
    assert "eth1" in ifaces and sub.rsplit(".", 1)[0] in ifaces, ifaces
    nets_doc = inspect(dk, mover)["NetworkSettings"]["Networks"]
    assert set(nets_doc) == {"bridge", app}, nets_doc
    mover_ip = nets_doc[app]["IPAddress"]
    assert mover_ip in ifaces
    (joined,) = events_of(engine, e.NetworkConnected, cursor)
    assert joined.meta.container_id == mover and joined.event.endpoint.ip_address == mover_ip
    # Now it resolves and reaches the network's members, and they resolve it by its alias.
    serving(dk, mover, resolve(dk, mover, f"csrv{t}"), "hello-conn")
    assert resolve(dk, srv, f"moved{t}") == mover_ip
    feed = network_feed(dk, app)
    assert feed.count("connect") == 2, feed  # csrv's start and mover's connect
    # A connect is kept across a restart: the start joins the network again.
    dk.docker("restart", "-t", "0", mover)
    wait_for(lambda: "eth1" in sh_in(dk, mover, "ip -o link show", check=False).stdout, 15,
             "the restarted container to join its connected network again")
    assert set(inspect(dk, mover)["NetworkSettings"]["Networks"]) == {"bridge", app}
    serving(dk, mover, resolve(dk, mover, f"csrv{t}"), "hello-conn")

    cursor = engine.last_event_id()
    dk.docker("network", "disconnect", app, mover)
    assert "eth1" not in sh_in(dk, mover, "ip -o link show").stdout
    (left,) = events_of(engine, e.NetworkDisconnected, cursor)
    assert left.meta.container_id == mover and left.event.network == app
    assert set(inspect(dk, mover)["NetworkSettings"]["Networks"]) == {"bridge"}
    assert fetch(dk, mover, srv_ip)[1] == ""
    assert sh_in(dk, srv, f"nslookup moved{t} 127.0.0.11", check=False).returncode != 0
    feed = network_feed(dk, app)
    assert feed[-1:] == ["disconnect"], feed


def test_network_container_mode(dk: DockerApi, engine: Engine, image: str,
                                nets: list[str]) -> None:
    t = engine.token
    app = f"shared{t}"
    (sub,) = subnets(t, 1, offset=11)
    nets.append(app)
    dk.docker("network", "create", "--subnet", sub, app)
    static_ip = sub.replace("0/24", "42")
    donor = run_d(dk, "--name", f"donor{t}", "--hostname", f"dh{t}", "--network", app,
                  "--ip", static_ip, image, "sleep", "300")
    joiner = run_d(dk, "--name", f"joiner{t}", "--network", f"container:donor{t}", image,
                   "sleep", "300")
    assert static_ip in sh_in(dk, joiner, "ip -o -4 addr show").stdout
    assert sh_in(dk, joiner, "hostname").stdout.strip() == f"dh{t}"
    assert sh_in(dk, joiner, "cat /etc/resolv.conf").stdout.startswith("nameserver 127.0.0.11")
    assert resolve(dk, joiner, f"donor{t}") == static_ip
    assert inspect(dk, joiner)["HostConfig"]["NetworkMode"] == f"container:donor{t}"
    # Docker's create-time rules ...
    err = dk.docker("create", "--network", f"container:donor{t}", "-p", "8080:80", image,
                    check=False)
    assert "conflicting options: port publishing and the container type network mode" \
        in err.stderr, err.stderr
    # ... and its start-time ones once the donor stopped.
    dk.docker("stop", "-t", "0", joiner)
    dk.docker("stop", "-t", "0", donor)
    err = dk.docker("start", joiner, check=False)
    assert err.returncode != 0
    assert (f"cannot join network namespace of a non running container: container "
            f"donor{t} is exited") in err.stderr, err.stderr


def test_legacy_links(dk: DockerApi, engine: Engine, image: str, nets: list[str]) -> None:
    t = engine.token
    srv = run_d(dk, "--name", f"lsrv{t}", "--expose", "80", "-e", "COLOR=blue", image, "sh",
                "-c", SERVE.format(body="hello-link"))
    cursor = engine.last_event_id()
    parent = run_d(dk, "--name", f"lcli{t}", "--link", f"lsrv{t}:web", image, "sleep", "300")
    hosts = sh_in(dk, parent, "cat /etc/hosts").stdout
    srv_ip = inspect(dk, srv)["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
    assert f"{srv_ip}\tweb {srv[:12]} lsrv{t}" in hosts, hosts
    serving(dk, parent, "web", "hello-link")  # by the alias, through /etc/hosts
    env = sh_in(dk, parent, "tr '\\0' '\\n' < /proc/1/environ").stdout  # the process's
    for var in (f"WEB_NAME=/lcli{t}/web", f"WEB_PORT=tcp://{srv_ip}:80",
                f"WEB_PORT_80_TCP=tcp://{srv_ip}:80", f"WEB_PORT_80_TCP_ADDR={srv_ip}",
                "WEB_PORT_80_TCP_PORT=80", "WEB_PORT_80_TCP_PROTO=tcp", "WEB_ENV_COLOR=blue"):
        assert var in env.splitlines(), (var, env)
    links = inspect(dk, parent)["HostConfig"]["Links"]
    assert links == [f"/lsrv{t}:/lcli{t}/web"], links
    (added,) = events_of(engine, e.LinkAdded, cursor)
    assert (added.event.parent, added.event.child, added.event.alias) == (parent, srv, "web")

    err = dk.docker("rm", "--link", f"lcli{t}", check=False)
    assert "Conflict, cannot remove the default link name of the container" in err.stderr
    dk.docker("rm", "--link", f"/lcli{t}/web")
    (removed,) = events_of(engine, e.LinkRemoved, cursor)
    assert (removed.event.parent, removed.event.alias) == (parent, "web")
    assert not world_links(engine)

    cursor = engine.last_event_id()
    p2 = run_d(dk, "--name", f"lcli2{t}", "--link", f"lsrv{t}:web2", image, "sleep", "300")
    assert world_links(engine) == {f"{p2}/web2": srv}
    dk.docker("rm", "-f", srv)  # removing the child records the link's removal
    (removed,) = events_of(engine, e.LinkRemoved, cursor)
    assert (removed.event.parent, removed.event.alias) == (p2, "web2")
    assert not world_links(engine)


def world_links(engine: Engine) -> dict[str, str]:
    from engine.snapshot import load_world

    return dict(load_world(engine.redis, engine.keys)[0].links)


def test_moor_network_cli(dk: DockerApi, engine: Engine, image: str, nets: list[str]) -> None:
    t = engine.token
    name, spare = f"cli{t}net", f"prune{t}"
    (sub,) = subnets(t, 1, offset=17)
    nets += [name, spare]
    nid = engine.moor("network", "create", "--subnet", sub, "--label", f"t={t}",
                      name).stdout.strip()
    assert len(nid) == 64
    engine.moor("network", "create", "--label", f"t={t}", "--label", "spare=1", spare)
    listed = engine.moor("network", "ls", "--filter", f"label=t={t}", "--format",
                         "{{.Name}} {{.ID}}").stdout.split("\n")
    assert f"{name} {nid[:12]}" in listed, listed
    (doc,) = json.loads(engine.moor("network", "inspect", nid[:10]).stdout)
    assert doc["Name"] == name and doc["IPAM"]["Config"][0]["Subnet"] == sub
    err = engine.moor("network", "create", "--subnet", sub, f"dup{t}", check=False)
    assert err.returncode != 0 and "Pool overlaps" in err.stderr
    ctr = run_d(dk, "--name", f"clic{t}", image, "sleep", "300")
    engine.moor("network", "connect", "--alias", f"al{t}", name, ctr)
    assert "eth1" in sh_in(dk, ctr, "ip -o link show").stdout
    (doc,) = json.loads(engine.moor("network", "inspect", name).stdout)
    assert list(doc["Containers"]) == [ctr]
    err = engine.moor("network", "rm", name, check=False)
    assert err.returncode != 0 and "has active endpoints" in err.stderr
    engine.moor("network", "disconnect", name, ctr)
    assert "eth1" not in sh_in(dk, ctr, "ip -o link show").stdout
    # moor run's networking flags: the address, an alias, DNS settings and a host entry.
    ip = sub.rsplit(".", 1)[0] + ".77"
    mine = engine.moor("run", "-d", "--network", name, "--ip", ip, "--network-alias",
                       f"mine{t}", "--dns-search", "example.test", "--add-host",
                       f"db{t}:10.213.250.9", image, "sleep", "300").stdout.strip()
    (doc,) = json.loads(dk.docker("inspect", mine).stdout)
    settings = doc["NetworkSettings"]["Networks"][name]
    assert settings["IPAddress"] == ip and f"mine{t}" in settings["Aliases"], settings
    assert f"10.213.250.9\tdb{t}" in sh_in(dk, mine, "cat /etc/hosts").stdout
    assert "search example.test" in sh_in(dk, mine, "cat /etc/resolv.conf").stdout
    engine.moor("rm", "-f", mine)
    out = engine.moor("network", "prune", "-f", "--filter", "label=spare=1").stdout
    assert out.split() == ["Deleted", "Networks:", spare], out
    assert engine.moor("network", "rm", name).stdout.split() == [name]
    names = engine.moor("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert name not in names and spare not in names and "bridge" in names


def test_everything_removed_leaves_nothing_and_replays(engine: Engine, moor_engine: Engine,
                                                       baseline: dict[str, list[str]]) -> None:
    """Runs last: the tests above removed their containers and networks."""
    assert not engine.remove_all()
    world_nets = engine.moor("network", "ls", "--format", "{{.Name}}", check=False)
    wait_for(lambda: host_state(engine) == baseline, 30,
             "the host to hold only what it held before the network tests",
             lambda: json.dumps({k: (baseline[k], v) for k, v in host_state(engine).items()
                                 if v != baseline[k]}, indent=1) + world_nets.stdout)
    assert not baseline["links"] and not baseline["netns"] and not baseline["resolvers"]
    out = engine.moor("replay", "--verify", check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
