"""Value types of user-defined networks, endpoints, DNS and legacy links (Docker's shapes).

Kept apart from `events.specs` so the networking schema evolves on its own; the same
msgspec rules hold: new fields get defaults, a type never changes.
"""

from __future__ import annotations

import msgspec

__all__ = ["EndpointSettings", "LinkTarget", "NetPlan", "NetworkInfo", "Networking"]


class EndpointSettings(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """What a container asked of one network (Docker's EndpointSettings as configured)."""

    aliases: tuple[str, ...] = ()  # --network-alias
    ipv4_address: str = ""  # --ip (IPAMConfig.IPv4Address)
    mac_address: str = ""  # --mac-address


class Networking(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A container's networking beyond HostConfig.NetworkMode (Docker's HostConfig Dns*,
    ExtraHosts, Links and NetworkingConfig.EndpointsConfig)."""

    endpoints: dict[str, EndpointSettings] = {}  # network name -> settings, primary first
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()  # "host:ip" as Docker's --add-host
    links: tuple[str, ...] = ()  # "name:alias" as given (resolved into World.links)


class NetworkInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The Docker-visible record of a user-defined network (its NetworkSpec aside)."""

    id: str
    created: int = 0
    labels: dict[str, str] = {}
    internal: bool = False
    ip_range: str = ""
    options: dict[str, str] = {}
    subnet_given: bool = True  # IPAM Config shows only Subnet/Gateway when auto-picked
    shards: int = 1  # the shards allocating on it, each from its own share (engine.shards)


class LinkTarget(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A legacy link resolved at start: what the parent's hosts file and env need."""

    alias: str
    name: str  # the child's name (no slash)
    hostname: str = ""
    ip: str = ""
    ports: tuple[str, ...] = ()  # "80/tcp"
    env: tuple[str, ...] = ()


class NetPlan(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """The networking part of a start plan: resolver, hosts and resolv.conf inputs."""

    embedded_dns: bool = False  # on a user-defined network: nameserver 127.0.0.11
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    extra_hosts: tuple[str, ...] = ()
    links: tuple[LinkTarget, ...] = ()
    parent_name: str = ""  # the container's own name, for <ALIAS>_NAME=/<parent>/<alias>
    shared_from: str = ""  # --network container:<id>: whose hosts files to reuse
    shared_hostname: str = ""  # ... and whose hostname (Docker's initializeNetworking)
