"""`moor network create|ls|inspect|rm|prune|connect|disconnect`: Docker's network verbs.

The same operations as the API's `/networks` routes (moor.netops, the networks
projection), so the two cannot drift: ids, errors and outputs are Docker's.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from moor.cliargs import client_of, confirm, kv_pairs, live_world
from moor.failures import guard

__all__ = ["register"]


def _create(args: argparse.Namespace) -> int:
    from engine.errors import InvalidParameter
    from moor import netops

    if args.driver not in ("bridge", None):
        raise InvalidParameter(f"moorage supports only the bridge network driver, not "
                               f"{args.driver}")
    client = client_of(args)
    print(netops.create_network(client, live_world(client), args.name, subnet=args.subnet or "",
                                gateway=args.gateway or "", ip_range=args.ip_range or "",
                                labels=kv_pairs(args.label), internal=args.internal,
                                options=kv_pairs(args.opt)))
    return 0


def _ls(args: argparse.Namespace) -> int:
    from projections.views.filters import parse_filter_flags
    from projections.views.networks import list_networks

    found = list_networks(live_world(client_of(args)), parse_filter_flags(args.filter))
    if args.quiet:
        for doc in found:
            print(doc["Id"] if args.no_trunc else doc["Id"][:12])
        return 0
    if args.format:
        for doc in found:
            print(_format(args.format, doc))
        return 0
    print(f"{'NETWORK ID':<15}{'NAME':<20}{'DRIVER':<10}SCOPE")
    for doc in found:
        nid = doc["Id"] if args.no_trunc else doc["Id"][:12]
        print(f"{nid:<15}{doc['Name']:<20}{doc['Driver']:<10}{doc['Scope']}")
    return 0


def _format(template: str, doc: dict[str, Any]) -> str:
    """The docker CLI's `{{.Name}}`-style fields of a network row (ID, Name, Driver...)."""
    fields = {"ID": doc["Id"][:12], "Name": doc["Name"], "Driver": doc["Driver"],
              "Scope": doc["Scope"], "Internal": str(doc["Internal"]).lower(),
              "Labels": ",".join(f"{k}={v}" for k, v in sorted((doc["Labels"] or {}).items())),
              "CreatedAt": doc["Created"], "IPv6": str(doc["EnableIPv6"]).lower()}
    out = template
    for key, value in fields.items():
        out = out.replace("{{.%s}}".replace("%s", key), value).replace(
            "{{ .%s }}".replace("%s", key), value)
    return out.replace("\\t", "\t")


def _inspect(args: argparse.Namespace) -> int:
    from engine.core.networks import resolve_network
    from projections.views.networks import network_doc

    world = live_world(client_of(args))
    docs = [network_doc(world, resolve_network(world, ref)) for ref in args.networks]
    print(json.dumps(docs, indent=4))
    return 0


def _rm(args: argparse.Namespace) -> int:
    from commands import schema as c

    client = client_of(args)
    for ref in args.networks:
        client.submit(c.RemoveNetwork(network=ref))
        print(ref)
    return 0


def _prune(args: argparse.Namespace) -> int:
    from commands import schema as c
    from commands.codec import CODEC
    from events import model as e
    from projections.views.filters import parse_filter_flags
    from projections.views.points import parse_time

    filters = parse_filter_flags(args.filter)
    if not args.force and not confirm("This will remove all custom networks not used by at "
                                      "least one container."):
        return 0
    until = parse_time(filters["until"][0], time.time_ns()) if filters.get("until") else 0
    client = client_of(args)
    sub = client.submit(c.PruneNetworks(labels=tuple(filters.get("label", [])),
                                        not_labels=tuple(filters.get("label!", [])),
                                        until=until))
    names: list[str] = []
    for _, raw in client.redis.xrange(client.keys.events, sub.last_event_id,
                                      sub.last_event_id):
        record = CODEC.record(raw[b"d"])
        if isinstance(record.event, e.NetworksPruned):
            names = list(record.event.names)
    if names:
        print("Deleted Networks:\n" + "\n".join(names))
    return 0


def _connect(args: argparse.Namespace) -> int:
    from events.netspecs import EndpointSettings
    from moor import netops

    settings = EndpointSettings(aliases=tuple(args.alias or ()), ipv4_address=args.ip or "",
                                mac_address=args.mac_address or "")
    netops.connect(client_of(args), args.network, args.container, settings,
                   timeout=args.timeout)
    return 0


def _disconnect(args: argparse.Namespace) -> int:
    from moor import netops

    netops.disconnect(client_of(args), args.network, args.container, args.force)
    return 0


def register(sub: Any) -> None:
    """Add `network` and its verbs to `moor`'s parser."""
    verbs = sub.add_parser("network", help="manage networks").add_subparsers(
        dest="network_command", required=True)
    p = verbs.add_parser("create", help="create a bridge network")
    p.add_argument("name")
    p.add_argument("-d", "--driver")
    p.add_argument("--subnet")
    p.add_argument("--gateway")
    p.add_argument("--ip-range")
    p.add_argument("--label", action="append")
    p.add_argument("-o", "--opt", action="append")
    p.add_argument("--internal", action="store_true")
    p.set_defaults(func=guard(_create))
    p = verbs.add_parser("ls", help="list networks")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-f", "--filter", action="append")
    p.add_argument("--format")
    p.add_argument("--no-trunc", action="store_true")
    p.set_defaults(func=guard(_ls))
    p = verbs.add_parser("inspect", help="show networks as JSON")
    p.add_argument("networks", nargs="+", metavar="NETWORK")
    p.set_defaults(func=guard(_inspect))
    p = verbs.add_parser("rm", help="remove networks")
    p.add_argument("networks", nargs="+", metavar="NETWORK")
    p.set_defaults(func=guard(_rm))
    p = verbs.add_parser("prune", help="remove unused networks")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--filter", action="append")
    p.set_defaults(func=guard(_prune))
    p = verbs.add_parser("connect", help="connect a container to a network")
    p.add_argument("--alias", action="append")
    p.add_argument("--ip")
    p.add_argument("--mac-address")
    p.add_argument("network")
    p.add_argument("container")
    p.set_defaults(func=guard(_connect))
    p = verbs.add_parser("disconnect", help="disconnect a container from a network")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("network")
    p.add_argument("container")
    p.set_defaults(func=guard(_disconnect))
