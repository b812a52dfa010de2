"""`moor volume create|ls|inspect|rm|prune`: Docker's volume verbs on the engine."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from moor.cliargs import client_of, confirm, kv_pairs, live_world
from moor.failures import guard

__all__ = ["register"]


def _root() -> str:
    from engine.config import data_root

    return os.path.realpath(data_root())


def _create(args: argparse.Namespace) -> int:
    name = client_of(args).create_volume(name=args.name or "", driver=args.driver or "",
                                       labels=kv_pairs(args.label), options=kv_pairs(args.opt))
    print(name)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from projections.views.filters import parse_filter_flags
    from projections.views.volumes import list_volumes

    found = list_volumes(live_world(client_of(args)), parse_filter_flags(args.filter))
    if args.quiet:
        for vol in found:
            print(vol.name)
        return 0
    print(f"{'DRIVER':<16}VOLUME NAME")
    for vol in found:
        print(f"{vol.driver:<16}{vol.name}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from projections.views.volumes import find_volume, volume_doc

    world = live_world(client_of(args))
    docs = [volume_doc(find_volume(world, name), _root()) for name in args.volumes]
    print(json.dumps(docs, indent=4))
    return 0


def _rm(args: argparse.Namespace) -> int:
    client = client_of(args)
    for name in args.volumes:
        client.remove_volume(name, args.force)
        print(name)
    return 0


def _prune(args: argparse.Namespace) -> int:
    from moor.pruning import prune_volumes
    from moor.statscli import human_size
    from projections.views.filters import parse_filter_flags

    filters = parse_filter_flags(args.filter)
    if args.all:
        filters["all"] = ["true"]
    if not args.force and not confirm("This will remove anonymous local volumes not used by "
                                      "at least one container."):
        return 0
    client = client_of(args)
    deleted, reclaimed = prune_volumes(client, live_world(client), filters, _root())
    if deleted:
        print("Deleted Volumes:\n" + "\n".join(deleted) + "\n")
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0


def register(sub: Any) -> None:
    """Add `volume` and its verbs to `moor`'s parser."""
    verbs = sub.add_parser("volume", help="manage volumes").add_subparsers(
        dest="volume_command", required=True)
    p = verbs.add_parser("create", help="create a volume")
    p.add_argument("name", nargs="?")
    p.add_argument("-d", "--driver")
    p.add_argument("--label", action="append")
    p.add_argument("-o", "--opt", action="append")
    p.set_defaults(func=guard(_create))
    p = verbs.add_parser("ls", help="list volumes")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-f", "--filter", action="append")
    p.set_defaults(func=guard(_ls))
    p = verbs.add_parser("inspect", help="show volumes as JSON")
    p.add_argument("volumes", nargs="+", metavar="VOLUME")
    p.set_defaults(func=guard(_inspect))
    p = verbs.add_parser("rm", help="remove volumes")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("volumes", nargs="+", metavar="VOLUME")
    p.set_defaults(func=guard(_rm))
    p = verbs.add_parser("prune", help="remove unused anonymous volumes (-a: all unused)")
    p.add_argument("-a", "--all", action="store_true")
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("--filter", action="append")
    p.set_defaults(func=guard(_prune))
