"""Docker-shaped network documents (`GET /networks`, `/networks/{id}`) and endpoint
entries (`NetworkSettings.Networks`), read from the World. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.core import networks as nets
from engine.core.state import Container, World
from events.netspecs import EndpointSettings
from projections.views.filters import check_keys, fuzzy_match, match_kv
from projections.views.points import rfc3339_nano

__all__ = ["FILTER_KEYS", "endpoint_entries", "list_networks", "network_doc"]

FILTER_KEYS = ("dangling", "driver", "id", "label", "name", "scope", "type")


def _ipam(world: World, name: str) -> dict[str, Any]:
    spec = world.networks[name]
    info = world.network_info.get(name)
    entry: dict[str, Any] = {"Subnet": spec.subnet, "Gateway": spec.gateway}
    if info is not None and info.ip_range:
        entry["IPRange"] = info.ip_range
    return {"Driver": "default", "Options": {} if info is not None else None,
            "Config": [entry]}


def _containers(world: World, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ctr in sorted(world.containers.values(), key=lambda x: x.id):
        ep = nets.joined(ctr).get(name)
        if ep is None:
            continue
        out[ctr.id] = {"Name": ctr.name, "EndpointID": ep.endpoint_id,
                       "MacAddress": ep.mac_address,
                       "IPv4Address": f"{ep.ip_address}/{ep.prefix_len}", "IPv6Address": ""}
    return out


def network_doc(world: World, name: str, with_containers: bool = True) -> dict[str, Any]:
    """Return Docker's network inspect document (list output has Containers {})."""
    info = world.network_info.get(name)
    created = info.created if info is not None else 0
    driver = name if name in ("host", "none") else "bridge"
    doc: dict[str, Any] = {
        "Name": name, "Id": nets.network_id(world, name),
        "Created": rfc3339_nano(created) if created else "0001-01-01T00:00:00Z",
        "Scope": "local", "Driver": driver, "EnableIPv4": True, "EnableIPv6": False,
        "IPAM": _ipam(world, name) if name in world.networks else
        {"Driver": "default", "Options": None, "Config": None},
        "Internal": info.internal if info is not None else False,
        "Attachable": False, "Ingress": False, "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": _containers(world, name) if with_containers else {},
        "Options": dict(info.options) if info is not None else (
            {"com.docker.network.bridge.name": world.networks[name].bridge,
             "com.docker.network.bridge.default_bridge": "true"}
            if name in world.networks else {}),
        "Labels": dict(info.labels) if info is not None else {},
    }
    return doc


def _all(world: World) -> list[str]:
    return list(world.networks) + [n for n in ("host", "none") if n not in world.networks]


def _dangling(world: World, name: str) -> bool:
    return not any(name in nets.networks_of(c) for c in world.containers.values())


def list_networks(world: World, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """Return `GET /networks` with Docker's filters (Containers is {} in list output)."""
    check_keys(filters, FILTER_KEYS)
    out = []
    for name in _all(world):
        nid = nets.network_id(world, name)
        custom = nets.is_user_network(world, name)
        if "name" in filters and not any(p in name for p in filters["name"]):
            continue
        if "id" in filters and not fuzzy_match(filters["id"], nid):
            continue
        if "driver" in filters and ("bridge" if name not in ("host", "none") else name) \
                not in filters["driver"]:
            continue
        if "type" in filters and ("custom" if custom else "builtin") not in filters["type"]:
            continue
        if "scope" in filters and "local" not in filters["scope"]:
            continue
        info = world.network_info.get(name)
        if "label" in filters and not match_kv(filters["label"],
                                               info.labels if info is not None else {}):
            continue
        if "dangling" in filters:
            want = filters["dangling"][0].lower() in ("1", "true")
            if want != (custom and _dangling(world, name)):
                continue
        out.append(network_doc(world, name, with_containers=False))
    return out


def _dns_names(ctr: Container, settings: EndpointSettings | None) -> list[str]:
    names = [ctr.name, *(settings.aliases if settings is not None else ()), ctr.id[:12],
             ctr.config.hostname]
    return list(dict.fromkeys(n for n in names if n))


def endpoint_entries(world: World, ctr: Container) -> dict[str, dict[str, Any]]:
    """Return NetworkSettings.Networks: one entry per network, addressed while joined."""
    live = nets.joined(ctr)
    out: dict[str, dict[str, Any]] = {}
    mode = ctr.host_config.network_mode
    names = nets.networks_of(ctr) or ([mode] if not mode.startswith("container:") else [])
    for name in names:
        ep = live.get(name)
        settings = ctr.networking.endpoints.get(name)
        user = nets.is_user_network(world, name)
        ipam = ({"IPv4Address": settings.ipv4_address}
                if settings is not None and settings.ipv4_address else None)
        out[name] = {
            "IPAMConfig": ipam, "Links": None,
            "Aliases": list(settings.aliases) if settings and settings.aliases else None,
            "MacAddress": ep.mac_address if ep else "", "DriverOpts": None,
            "NetworkID": nets.network_id(world, name) if name in world.networks else "",
            "EndpointID": ep.endpoint_id if ep else "",
            "Gateway": ep.gateway if ep else "", "IPAddress": ep.ip_address if ep else "",
            "IPPrefixLen": ep.prefix_len if ep else 0, "IPv6Gateway": "",
            "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "DNSNames": _dns_names(ctr, settings) if user else None,
        }
    return out


def host_config_networking(world: World, ctr: Container) -> dict[str, Any]:
    """Return the networking keys of HostConfig: Dns*, ExtraHosts and the legacy Links
    (`/<child>:/<parent>/<alias>`, from the engine's link index as Docker's)."""
    net = ctr.networking
    prefix = ctr.id + "/"
    links = []
    for key, child_id in sorted(world.links.items()):
        child = world.containers.get(child_id)
        if key.startswith(prefix):
            shown = child.name if child is not None else child_id[:12]
            links.append(f"/{shown}:/{ctr.name}/{key[len(prefix):]}")
    return {"Dns": list(net.dns), "DnsOptions": list(net.dns_options),
            "DnsSearch": list(net.dns_search), "ExtraHosts": list(net.extra_hosts) or None,
            "Links": links or None}
