"""Two engines on one host: each reconciles only what carries its own id (issue 8, #13).

Engine A is the session's engine. Engine B starts beside it in the test, as a second
`moor up` would: its own data root, key prefix, bridge and subnet (on the session's Redis
server, under other keys). B's worker reconciles before it takes jobs; it must leave A's
running container whole, journal nothing about it, and still release its own leftovers.
"""

from __future__ import annotations

import glob
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from events import model as e
from tests.conftest import RedisServer
from tests.e2e.conftest import (
    REPO,
    Engine,
    _teardown,
    free_port,
    host_engine_id,
    http_get,
    new_engine,
    pick_subnet,
    ps_status,
    start_ticks,
    wait_for,
)

pytestmark = pytest.mark.privileged


@contextmanager
def second_engine(redis_server: RedisServer) -> Iterator[Engine]:
    """Start engine B's reducer (its worker is the test's to start); tear it all down after."""
    from workers.net.netconf import BridgeConfig

    token = secrets.token_hex(3)
    b = new_engine(redis_server.url, token, f"moor-e2e-b-{token}-", f"moore2eb{token}",
                   f"moorb2{token}", "e2e-b")
    try:
        b.start_reducer()
        yield b
    finally:
        # The session engine's own teardown: rm -f, stop by PID, release the bridge, chains
        # and cgroup parent, drop the keys and the data root, then prove nothing is left.
        problems = _teardown(b, BridgeConfig(name=b.bridge, subnet=b.subnet))
        assert not problems, "engine B teardown: " + "; ".join(problems)


def in_engine(b: Engine, code: str, *args: str) -> None:
    """Run Python as one of engine B's programs would: its environment, this repository."""
    subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=b.env, check=True,
                   capture_output=True, timeout=60)


def netns_with(cid: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if cid in n)
    except FileNotFoundError:
        return []


def host_facts(a: Engine, cid: str, pid: int, sandbox: str) -> dict[str, Any]:
    """Read what the host holds for a container's run, independently of moorage's code."""
    veth = Path("/sys/class/net", f"mv{cid[:12]}")
    try:
        groups = [line for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
                  if cid in line]
    except FileNotFoundError:  # the process is gone
        groups = []
    # v1: /sys/fs/cgroup/<controllers><path>; v2 ("0::<path>"): /sys/fs/cgroup<path>.
    group_dirs = [glob.glob(f"/sys/fs/cgroup/{ctl}{path}" if ctl else f"/sys/fs/cgroup{path}")
                  for _, ctl, path in (line.split(":", 2) for line in groups)]
    merged = os.path.join(os.path.realpath(a.container_dir(cid)), "merged")
    return {
        "netns": (sandbox, os.stat(sandbox).st_ino if os.path.exists(sandbox) else None,
                  os.readlink(f"/proc/{pid}/ns/net") if groups else None),
        "veth": (veth.exists(), (veth / "ifalias").read_text().strip() if veth.exists() else ""),
        "rules": sorted(line for line in subprocess.run(
            ["iptables-save"], check=True, capture_output=True, text=True).stdout.splitlines()
            if cid in line),
        "cgroups": (groups, [bool(found) and all(str(pid) in Path(d, "cgroup.procs").read_text()
                                                  for d in found) for found in group_dirs]),
        "mount": [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1] == merged],
        "process": (pid, start_ticks(pid)),
    }


def journaled_about(b: Engine, cid: str) -> list[str]:
    """Return what B's streams hold about a container: commands, reports and events
    (empty: none)."""
    found = [f"command {entry_id!r}" for stream in (b.keys.commands, b.keys.reports)
             for entry_id, fields in b.redis.xrange(stream)
             if any(cid.encode() in value for value in fields.values())]
    found += [f"event {type(r.event).__name__}" for _, r in b.events()
              if r.meta.container_id == cid
              or getattr(r.event, "container_id", None) == cid]
    return found


def test_a_second_engine_leaves_the_first_engines_container_alone(
        engine: Engine, redis_server: RedisServer) -> None:
    port = free_port()
    cid = engine.run("httpd", "-f", "-p", "80", publish={"80/tcp": str(port)})
    doc = engine.inspect(cid)
    pid, sandbox = doc["State"]["Pid"], doc["NetworkSettings"]["SandboxKey"]
    before = host_facts(engine, cid, pid, sandbox)
    _, inode, netns = before["netns"]
    # Something real to lose: every kind of resource is there before B starts.
    assert inode is not None and netns == f"net:[{inode}]"
    assert before["veth"][0] and before["rules"] and before["mount"]
    assert before["cgroups"][0] and all(before["cgroups"][1])
    assert http_get("127.0.0.1", port, "/missing")[0] == 404

    # Planted before B starts: a namespace B itself names for a container its journal does
    # not know (its own leftover, to be released), and one with the name engines gave
    # before they had ids, of no container any journal here knows (to be left alone).
    own_orphan, unnamed = secrets.token_hex(32), secrets.token_hex(32)
    with second_engine(redis_server) as b:
        try:
            in_engine(b, "import sys; from workers.net import network; "
                         "network.ensure_sandbox(sys.argv[1])", own_orphan)
            subprocess.run(["ip", "netns", "add", f"moor-{unnamed}"], check=True)
            assert netns_with(own_orphan)
            b.start_worker()  # reconciles before it registers with rq

            # B did reconcile (its reducer journals the drift of its own leftover)...
            def b_orphan_drift() -> list[e.DriftObserved]:
                return [r.event for _, r in b.events() if isinstance(r.event, e.DriftObserved)
                        and r.event.container_id == own_orphan]

            drifts = wait_for(b_orphan_drift, 30, "B to journal its own orphan",
                              lambda: b.log_tail("worker") + "\n" + b.log_tail("reducer"))
            assert [d.resource for d in drifts] == ["orphan"]
            assert netns_with(own_orphan) == []

            # ...and left A's container as it was: same namespace, link, rules, groups,
            # mount and process, still serving its port; nothing about it in B's journal.
            assert host_facts(engine, cid, pid, sandbox) == before
            assert journaled_about(b, cid) == []
            assert engine.inspect(cid)["State"]["Pid"] == pid
            assert ps_status(engine, cid).startswith("Up")
            assert http_get("127.0.0.1", port, "/missing")[0] == 404
            # A name without an engine id may be another engine's live container: kept.
            assert netns_with(unnamed) == [f"moor-{unnamed}"]
            assert journaled_about(b, unnamed) == []
        finally:
            for name in netns_with(unnamed) + netns_with(own_orphan):
                subprocess.run(["ip", "netns", "delete", name], check=False)
    assert [r for _, r in engine.events(cid) if isinstance(r.event, e.DriftObserved)] == []


def test_host_resources_carry_the_engines_id(engine: Engine) -> None:
    eid = host_engine_id(engine)
    cid = engine.run("httpd", "-f", "-p", "80", publish={"80/tcp": str(free_port())})
    doc = engine.inspect(cid)
    facts = host_facts(engine, cid, doc["State"]["Pid"], doc["NetworkSettings"]["SandboxKey"])
    assert facts["netns"][0] == f"/run/netns/moor-{eid}-{cid}"
    assert facts["veth"] == (True, f"moor:{eid}:{cid}")
    bridge_alias = Path("/sys/class/net", engine.bridge, "ifalias").read_text().strip()
    assert bridge_alias == f"moor:bridge:{eid}"
    [dnat] = facts["rules"]
    assert dnat.startswith(f"-A MOOR-DNAT-{eid} ") and f"moor:{eid}:{cid}" in dnat
    rules = subprocess.run(["iptables-save"], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    for hook in (f"-A PREROUTING -m addrtype --dst-type LOCAL -j MOOR-DNAT-{eid}",
                 f"-A POSTROUTING -j MOOR-POSTROUTING-{eid}", f"-A FORWARD -j MOOR-FORWARD-{eid}"):
        assert hook in rules
    groups, alive = facts["cgroups"]
    assert groups and all(g.endswith(f"/moorage/{eid}/{cid}") for g in groups) and all(alive)


def test_an_upgraded_engine_releases_what_it_named_before_engine_ids(privileged: None) -> None:
    """A container started before the upgrade is torn down after it: its names had no id."""
    from workers.net import network, portmap
    from workers.net.netconf import LEGACY, BridgeConfig, PortMapping

    token, cid = secrets.token_hex(3), secrets.token_hex(32)
    eid = f"t{token}"  # the upgraded engine, named for this test alone
    cfg = BridgeConfig(name=f"moorup{token}", subnet=pick_subnet(token))
    ip = str(cfg.network.network_address + 2)
    mapping = PortMapping(container_port=80, host_port=free_port())

    def iptables() -> list[str]:
        return subprocess.run(["iptables-save"], check=True, capture_output=True,
                              text=True).stdout.splitlines()

    try:
        # What the earlier version made, name for name.
        network.ensure_bridge(cfg, LEGACY)
        portmap.ensure_chains(cfg, LEGACY)
        network.ensure_sandbox(cid, LEGACY)
        network.ensure_endpoint(cid, cfg, ip, cfg.prefixlen, cfg.gateway, engine=LEGACY)
        portmap.ensure_ports(cid, ip, [mapping], cfg, LEGACY)
        assert netns_with(cid) == [f"moor-{cid}"]
        veth = Path("/sys/class/net", f"mv{cid[:12]}", "ifalias")
        assert veth.read_text().strip() == f"moor:{cid}"
        assert [line.split()[1] for line in iptables() if cid in line] == ["MOOR-DNAT"]

        # The upgraded engine adopts the bridge; its listings of its own names skip them.
        network.ensure_bridge(cfg, eid)
        portmap.ensure_chains(cfg, eid)
        alias = Path("/sys/class/net", cfg.name, "ifalias").read_text().strip()
        assert alias == f"moor:bridge:{eid}"
        assert cid not in network.list_sandboxes(eid) + network.list_endpoints(eid)
        assert cid not in portmap.list_port_rules(eid)
        assert cid in network.list_sandboxes(LEGACY) and cid in network.list_endpoints(LEGACY)
        assert cid in portmap.list_port_rules(LEGACY)

        # Its releases, as its saga and reconcile call them, take the old names too.
        portmap.release_ports(cid, eid)
        network.release_sandbox(cid, engine=eid)
        assert netns_with(cid) == [] and not veth.parent.exists()
        assert [line for line in iptables() if cid in line] == []
    finally:
        portmap.release_ports(cid, LEGACY)
        network.release_sandbox(cid, engine=LEGACY)
        for owner in (eid, LEGACY):  # the legacy chains stay if other engines' rules use them
            portmap.release_chains(cfg, owner)
        network.release_bridge(cfg)
    assert [line for line in iptables() if cfg.name in line or f"-{eid}" in line] == []
