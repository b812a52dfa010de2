"""The networking part of `POST /containers/create`: NetworkingConfig and HostConfig's
Dns, DnsSearch, DnsOptions, ExtraHosts and Links, as moorage's `Networking`. Pure.

Settings moorage does not implement are refused with a 400 naming the field, as the rest
of the create body's are (moor.api.create).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.errors import InvalidParameter
from events.netspecs import EndpointSettings, Networking
from moor.api.jsonshape import json_object, string_list

__all__ = ["NETWORK_HOST_FIELDS", "check_networking", "networking_spec"]

NETWORK_HOST_FIELDS = frozenset({"Dns", "DnsSearch", "DnsOptions", "ExtraHosts", "Links"})
_ENDPOINT_FIELDS = frozenset({"IPAMConfig", "Aliases", "MacAddress", "NetworkID", "Links",
                              "DNSNames"})


def _endpoint(doc: Mapping[str, Any], where: str) -> EndpointSettings:
    from moor.api.create import UnsupportedSetting, is_unset

    for key, value in doc.items():
        if key not in _ENDPOINT_FIELDS and not is_unset(value, f"{where}.{key}"):
            raise UnsupportedSetting(f"moorage does not support the container setting "
                                     f"{where}.{key}; remove it or leave it at its default")
    ipam = json_object(doc.get("IPAMConfig"), f"{where}.IPAMConfig")
    for key in ("IPv6Address", "LinkLocalIPs"):
        if ipam.get(key):
            raise UnsupportedSetting(f"moorage does not support the container setting "
                                     f"{where}.IPAMConfig.{key} (IPv4 only)")
    ip = ipam.get("IPv4Address") or ""
    mac = doc.get("MacAddress") or ""
    if not isinstance(ip, str) or not isinstance(mac, str):
        raise InvalidParameter(f"invalid JSON: {where} addresses must be strings")
    return EndpointSettings(aliases=string_list(doc.get("Aliases"), f"{where}.Aliases"),
                            ipv4_address=ip, mac_address=mac)


def _extra_host(entry: str) -> str:
    # Docker's CLI sends "name:ip" (older) or "name=ip"; the name never holds either.
    cut = min((i for i in (entry.find(":"), entry.find("=")) if i >= 0), default=-1)
    if cut <= 0:
        raise InvalidParameter(f"invalid argument \"{entry}\" for \"--add-host\" flag: "
                               "bad format for add-host")
    return f"{entry[:cut]}:{entry[cut + 1:]}"


def networking_spec(body: Mapping[str, Any], mode: str) -> Networking | None:
    """Return the container's Networking, or None when the request sets none of it."""
    host = json_object(body.get("HostConfig"), "HostConfig")
    networking = json_object(body.get("NetworkingConfig"), "NetworkingConfig")
    config = json_object(networking.get("EndpointsConfig"), "NetworkingConfig.EndpointsConfig")
    endpoints: dict[str, EndpointSettings] = {}
    for name, doc in config.items():
        key = "bridge" if name == "default" else name
        settings = _endpoint(json_object(doc, f"NetworkingConfig.EndpointsConfig.{name}"),
                             f"NetworkingConfig.EndpointsConfig.{name}")
        if key != mode or settings != EndpointSettings():
            endpoints[key] = settings
    net = Networking(endpoints=endpoints, dns=string_list(host.get("Dns"), "HostConfig.Dns"),
                     dns_search=string_list(host.get("DnsSearch"), "HostConfig.DnsSearch"),
                     dns_options=string_list(host.get("DnsOptions"), "HostConfig.DnsOptions"),
                     extra_hosts=tuple(_extra_host(h) for h in string_list(
                         host.get("ExtraHosts"), "HostConfig.ExtraHosts")),
                     links=string_list(host.get("Links"), "HostConfig.Links"))
    return None if net == Networking() else net


def check_networking(doc: Any, mode: str) -> None:
    """Validate NetworkingConfig's shape (the engine decides what the settings mean)."""
    from moor.api.create import UnsupportedSetting, is_unset

    networking = json_object(doc, "NetworkingConfig")
    for name, settings in json_object(networking.get("EndpointsConfig"),
                               "NetworkingConfig.EndpointsConfig").items():
        _endpoint(json_object(settings, f"NetworkingConfig.EndpointsConfig.{name}"),
                  f"NetworkingConfig.EndpointsConfig.{name}")
    for key, value in networking.items():
        if key != "EndpointsConfig" and not is_unset(value, f"NetworkingConfig.{key}"):
            raise UnsupportedSetting(f"moorage does not support the container setting "
                                     f"NetworkingConfig.{key}")
