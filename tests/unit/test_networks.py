"""Given/when/then tests of the networking decisions (engine.core.networks): user networks,
IPAM per network, endpoints, live connect and disconnect, `container:` mode and legacy
links, with Docker's texts (docker-semantics-2 §13). The DSL is test_decide's; every
`then` also checks that replaying the records rebuilds the live world.
"""

from __future__ import annotations

from typing import Any

from commands import schema as c
from engine.core.react import react, start_plan
from events import model as e
from events.netspecs import EndpointSettings, Networking
from events.specs import HostConfig
from tests.unit.test_decide import (
    A,
    B,
    C,
    create,
    exited,
    given,
    removed,
    running,
    saga,
    start,
)

NID = "d" * 64
NID2 = "e" * 64
SUB = "10.213.9.0/24"


def net(name: str = "appnet", subnet: str = SUB, nid: str = NID, **kw: Any) -> c.CreateNetwork:
    return c.CreateNetwork(name=name, network_id=nid, subnet=subnet, **kw)


def on(network: str, ip: str = "", aliases: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    """create()'s keywords for a container on a network (its HostConfig and Networking)."""
    settings = EndpointSettings(ipv4_address=ip, aliases=aliases)
    return {"host": HostConfig(network_mode=network),
            "networking": Networking(endpoints={network: settings}, **kw)}


def ncreate(name: str = "web", cid: str = A, network: str = "appnet", ip: str = "",
            **kw: Any) -> tuple[str, c.CreateContainer]:
    target, cmd = create(name, cid, host=HostConfig(network_mode=network))
    assert isinstance(cmd, c.CreateContainer)
    settings = EndpointSettings(ipv4_address=ip, aliases=kw.pop("aliases", ()))
    import msgspec

    networking = Networking(endpoints={network: settings}, **kw)
    return target, msgspec.structs.replace(cmd, networking=networking)


def nrunning(name: str = "web", cid: str = A, **kw: Any) -> tuple[Any, ...]:
    return ncreate(name, cid, **kw), start(cid), *saga(1, cid)


def rejected(status: int, message: str) -> tuple[int, str]:
    return (status, message)


# --- network create / remove / prune -------------------------------------------------------

def test_create_network_records_its_spec_and_gateway() -> None:
    t = given().when(net(labels={"k": "v"})).then(e.NetworkCreated)
    ev = t.events[0]
    assert (ev.network.subnet, ev.network.gateway, ev.network.bridge) == (
        SUB, "10.213.9.1", "mb" + NID[:12])
    assert ev.info.id == NID and ev.info.labels == {"k": "v"}


def test_create_network_name_taken() -> None:
    given(net()).when(net(nid=NID2, subnet="10.213.10.0/24")).then(
        rejected(409, "network with name appnet already exists"))


def test_create_network_predefined_name() -> None:
    given().when(net(name="bridge")).then(
        rejected(403, "operation is not permitted on predefined bridge network "))


def test_create_network_overlapping_pool() -> None:
    given(net()).when(net(name="other", nid=NID2, subnet="10.213.9.128/25")).then(
        rejected(403, "invalid pool request: Pool overlaps with other one on this address "
                      "space"))


def test_create_network_ipam_errors_one_per_line() -> None:
    given().when(net(subnet="10.213.9.5/24", gateway="10.213.10.1")).then(
        rejected(400, "invalid network config:\ninvalid subnet 10.213.9.5/24: it should be "
                      "10.213.9.0/24\ninvalid gateway 10.213.10.1: parent subnet "
                      "10.213.9.5/24 doesn't contain this address"))


def test_create_network_picks_a_free_subnet_when_none_given() -> None:
    t = given(net(subnet="10.214.0.0/24")).when(
        net(name="auto", nid=NID2, subnet="", subnet_given=False)).then(e.NetworkCreated)
    assert t.events[0].network.subnet == "10.214.1.0/24"


def test_remove_network_with_endpoints_is_refused() -> None:
    given(net(), *nrunning()).when(c.RemoveNetwork(network="appnet")).then(
        rejected(403, f'error while removing network: network appnet id {NID} has active '
                      f'endpoints (name:"web" id:"{A[:12]}")'))


def test_remove_network_by_id_prefix() -> None:
    t = given(net()).when(c.RemoveNetwork(network=NID[:8])).then(e.NetworkRemoved)
    assert "appnet" not in t.world.networks and "appnet" not in t.world.network_info


def test_remove_predefined_network_is_refused() -> None:
    given().when(c.RemoveNetwork(network="bridge")).then(
        rejected(403, "bridge is a pre-defined network and cannot be removed"))


def test_remove_unknown_network() -> None:
    given().when(c.RemoveNetwork(network="nope")).then(rejected(404, "network nope not found"))


def test_prune_skips_networks_in_use_and_filters_labels() -> None:
    t = given(net(labels={"keep": "1"}), net(name="b", nid=NID2, subnet="10.213.10.0/24"),
              net(name="c", nid="f" * 64, subnet="10.213.11.0/24"),
              ncreate(network="c")).when(c.PruneNetworks(not_labels=("keep",))).then(
        e.NetworkRemoved, e.NetworksPruned)
    assert t.events[1].names == ("b",)


# --- endpoints and IPAM per network ----------------------------------------------------------

def test_start_on_a_user_network_takes_the_lowest_free_address_and_embedded_dns() -> None:
    given(net(), *nrunning("one", A)).when(ncreate("two", B)).then(
        e.ContainerCreated, e.NetworkingConfigured)
    t2 = given(net(), *nrunning("one", A), ncreate("two", B)).when(start(B))
    first = t2.world.containers[A].endpoint
    assert first is not None and first.ip_address == "10.213.9.2"
    plan = start_plan(t2.world, t2.world.containers[B])
    assert plan.endpoint is not None and plan.endpoint.ip_address == "10.213.9.3"
    assert plan.net is not None and plan.net.embedded_dns


def test_static_ip_is_given_and_cannot_be_shared() -> None:
    t = given(net(), *nrunning("one", A, ip="10.213.9.50"), ncreate("two", B, ip="10.213.9.50"))
    assert t.world.containers[A].endpoint.ip_address == "10.213.9.50"
    t.when(start(B)).then(rejected(403, "Address already in use"))


def test_static_ip_outside_the_subnet_is_refused_at_create() -> None:
    given(net()).when(ncreate(ip="10.213.99.5")).then(
        rejected(400, "invalid endpoint settings:\ninvalid address 10.213.99.5: It does not "
                      "belong to any of this network's subnets"))


def test_alias_and_ip_on_the_default_bridge_are_refused() -> None:
    given().when(ncreate(network="bridge", ip="172.17.0.9", aliases=("x",))).then(
        rejected(400, "invalid endpoint settings:\nuser specified IP address is supported on "
                      "user defined networks only\nnetwork-scoped alias is supported only for "
                      "containers in user defined networks"))


# --- connect / disconnect ------------------------------------------------------------------

def test_connect_a_running_container_reserves_joins_and_disconnect_frees() -> None:
    g = given(net(), *running("web", A))
    t = g.when(c.ConnectNetwork(ref="web", network="appnet",
                                settings=EndpointSettings(aliases=("al",))))
    t.then(e.NetworkingConfigured, e.EndpointReserved)
    reserved = t.events[1].endpoint
    assert reserved.ip_address == "10.213.9.2"
    jobs = react(g.world, g.records[-1])
    assert [j.func for j in jobs] == ["workers.netjobs.connect_endpoint"]
    assert g.world.addresses["appnet/10.213.9.2"] == A
    g.when((A, c.ReportNetworkJoined(generation=1, network="appnet", endpoint_id="mxabc"))
           ).then(e.NetworkConnected)
    assert g.world.containers[A].endpoints["appnet"].endpoint_id == "mxabc"
    t = g.when(c.DisconnectNetwork(ref="web", network="appnet"))
    t.then(e.NetworkingConfigured, e.NetworkDisconnected)
    assert "appnet" not in g.world.containers[A].endpoints
    assert "appnet/10.213.9.2" not in g.world.addresses
    assert [j.func for j in react(g.world, g.records[-1])] == [
        "workers.netjobs.disconnect_endpoint"]


def test_a_failed_join_releases_the_address() -> None:
    g = given(net(), *running("web", A), c.ConnectNetwork(ref="web", network="appnet"))
    g.when((A, c.ReportNetworkJoined(generation=1, network="appnet", error="no bridge"))
           ).then(e.EndpointReleased)
    assert not g.world.containers[A].endpoints and "appnet/10.213.9.2" not in g.world.addresses


def test_connect_twice_while_running_is_refused() -> None:
    given(net(), *nrunning()).when(c.ConnectNetwork(ref="web", network="appnet")).then(
        rejected(403, "endpoint with name web already exists in network appnet"))


def test_connect_a_stopped_container_only_records_the_setting() -> None:
    t = given(net(), create()).when(c.ConnectNetwork(ref="web", network="appnet"))
    t.then(e.NetworkingConfigured)
    assert "appnet" in t.world.containers[A].networking.endpoints


def test_connected_networks_are_joined_again_at_every_start() -> None:
    """Docker keeps a `network connect` across restarts; the start joins it again."""
    from tests.unit.test_decide import joined as primary_joined
    from tests.unit.test_decide import mounted, sandbox, spawned

    g = given(net(), create(), c.ConnectNetwork(ref="web", network="appnet"), start(A),
              mounted(1, A), sandbox(1, A), primary_joined(1, A))
    t = g.when(spawned(1, A))
    t.then(e.ContainerStarted, e.EndpointReserved)
    assert t.events[1].endpoint.network == "appnet"
    assert [j.func for j in react(g.world, g.records[-1])] == [
        "workers.netjobs.connect_endpoint"]
    g.when((A, c.ReportNetworkJoined(generation=1, network="appnet", endpoint_id="mx1"))
           ).then(e.NetworkConnected)
    # The exit disconnects it; the next start reserves and joins it again.
    g.when(exited(1)).then(e.NetworkDisconnected, e.NetworkDisconnected, e.ContainerDied)
    assert "appnet" not in g.world.containers[A].endpoints
    for step in (start(A), *saga(2, A)[:-1]):
        g.apply(step)
    g.when(spawned(2, A)).then(e.ContainerStarted, e.EndpointReserved)


def test_connect_in_container_mode_is_refused() -> None:
    given(net(), *running("donor", B), create(host=HostConfig(network_mode="container:donor"))
          ).when(c.ConnectNetwork(ref="web", network="appnet")).then(
        rejected(400, "container sharing network namespace with another container or host "
                      "cannot be connected to any other network"))


def test_disconnect_a_network_it_is_not_on() -> None:
    given(net(), *running()).when(c.DisconnectNetwork(ref="web", network="appnet")).then(
        rejected(500, f"container {A} is not connected to network appnet"))
    given(net(), create()).when(c.DisconnectNetwork(ref="web", network="appnet")).then(
        rejected(500, f"container {A} is not connected to the network appnet"))


# --- --network container:<x> -------------------------------------------------------------

def test_container_mode_refuses_published_ports_at_create() -> None:
    from events.specs import PortBinding

    host = HostConfig(network_mode="container:donor",
                      port_bindings={"80/tcp": (PortBinding(host_port="8080"),)})
    given().when(create(host=host)).then(
        rejected(400, "conflicting options: port publishing and the container type network "
                      "mode"))


def test_container_mode_start_needs_a_running_donor() -> None:
    host = HostConfig(network_mode="container:donor")
    given(create("donor", B), create("web", A, host=host)).when(start("web")).then(
        rejected(409, "cannot join network namespace of a non running container: container "
                      "donor is created"))
    given(create("web", A, host=host)).when(start("web")).then(
        rejected(500, "joining network namespace of container: No such container: donor"))


def test_container_mode_plan_shares_the_donors_files_and_hostname() -> None:
    g = given(*running("donor", B, hostname="dh"),
              create("web", A, host=HostConfig(network_mode="container:donor")), start("web"))
    plan = start_plan(g.world, g.world.containers[A])
    assert plan.net is not None
    assert (plan.net.shared_from, plan.net.shared_hostname) == (B, "dh")


# --- legacy links ----------------------------------------------------------------------------

def linked(parent: str = "web", cid: str = A, link: str = "srv:db") -> Any:
    target, cmd = create(parent, cid)
    import msgspec

    return target, msgspec.structs.replace(cmd, networking=Networking(links=(link,)))


def test_link_is_recorded_and_resolved_into_the_start_plan() -> None:
    t = given(*running("srv", B, exposed_ports=("80/tcp",), env=("COLOR=blue",))).when(
        linked())
    t.then(e.ContainerCreated, e.LinkAdded, e.NetworkingConfigured)
    assert t.world.links == {f"{A}/db": B}
    g = given(*running("srv", B, exposed_ports=("80/tcp",), env=("COLOR=blue",)), linked(),
              start("web"))
    plan = start_plan(g.world, g.world.containers[A])
    assert plan.net is not None
    (link,) = plan.net.links
    srv_ip = g.world.containers[B].endpoint.ip_address
    assert (link.alias, link.name, link.ip, link.ports, link.env) == (
        "db", "srv", srv_ip, ("80/tcp",), ("COLOR=blue",))


def test_link_to_a_missing_container_is_refused() -> None:
    given().when(linked(link="ghost:db")).then(
        rejected(400, "could not get container for ghost: No such container: ghost"))


def test_link_to_a_stopped_child_fails_the_start() -> None:
    given(create("srv", B), linked()).when(start("web")).then(
        rejected(500, "Cannot link to a non running container: /srv AS /web/db"))


def test_rm_link_removes_only_the_link() -> None:
    g = given(*running("srv", B), linked())
    g.when(c.RemoveLink(name="/web/db")).then(e.LinkRemoved(parent=A, alias="db"))
    assert not g.world.links and A in g.world.containers
    g.when(c.RemoveLink(name="web")).then(
        rejected(500, "Conflict, cannot remove the default link name of the container"))


def test_removing_the_child_removes_its_links() -> None:
    g = given(*running("srv", B), linked(), linked("other", C, "srv:db2"),
              c.RemoveContainer(ref="srv", force=True), exited(cid=B, code=137))
    assert len(g.world.links) == 2  # until the removal completes
    t = g.when(removed(B))
    removals = [ev for ev in t.events if isinstance(ev, e.LinkRemoved)]
    assert removals == [e.LinkRemoved(parent=A, alias="db"), e.LinkRemoved(parent=C,
                                                                             alias="db2")]
    assert not g.world.links


def test_network_events_name_the_network_by_id() -> None:
    """Docker's network events: Actor.ID is the network's id; create and destroy too."""
    from projections.views.feed import FeedState, docker_event, observe

    got = given(net(), *nrunning(), c.StopContainer(ref="web"), exited(), rm_web(),
                removed(), c.RemoveNetwork(network="appnet"))
    state = FeedState()
    feed = []
    for n, record in enumerate(got.records):
        observe(state, record)
        ev = docker_event(record, f"{n + 1}-0", state)
        if ev is not None and ev["Type"] == "network":
            feed.append((ev["Action"], ev["Actor"]["ID"],
                         ev["Actor"]["Attributes"].get("container")))
    assert feed == [("create", NID, None), ("connect", NID, A), ("disconnect", NID, A),
                    ("destroy", NID, None)]
    # A live feed seeded from the world names it the same way.
    live = given(net(), *nrunning())
    record = next(r for r in live.records if isinstance(r.event, e.NetworkConnected))
    ev = docker_event(record, "1-0", live.world)
    assert ev is not None and ev["Actor"]["ID"] == NID


def rm_web() -> c.RemoveContainer:
    return c.RemoveContainer(ref="web")
