"""Host-side `moor` subcommands: image import/load/ls/rm (`images`, `rmi`), logs.

They touch this host's files (the image store, the containers' json logs), so they call
into workers/; those modules load only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from moor.failures import guard, print_error

if TYPE_CHECKING:
    from commands.client import Client
    from workers.storage.images import ImageInfo

__all__ = ["image_fields", "register", "register_image"]


def _client(args: argparse.Namespace) -> Client:
    from moor.cliargs import client_of

    return client_of(args)


def image_fields(info: ImageInfo) -> dict[str, Any]:
    """The RegisterImage fields of an image stored on this host."""
    from workers.storage import images

    return {"image_id": info.id, "repo_tags": info.repo_tags, "config": info.config,
            "layers": info.layers, "size": info.size, "created": images.created_ns(info)}


def register_image(client: Client, info: ImageInfo) -> None:
    """Make an image stored on this host known to the engine (ImageRegistered)."""
    client.register_image(**image_fields(info))


def _import(args: argparse.Namespace) -> int:
    from engine.config import data_root
    from workers.storage import images

    info = images.import_rootfs(data_root(), args.tarball, args.ref)
    register_image(_client(args), info)
    print(info.id)
    return 0


def _load(args: argparse.Namespace) -> int:
    from engine.config import data_root
    from workers.storage.archives import load_archive

    client = _client(args)
    for info in load_archive(data_root(), args.input):
        register_image(client, info)
        for tag in info.repo_tags or (info.id,):
            print(f"Loaded image: {tag}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from engine.config import data_root
    from engine.errors import MoorError
    from engine.snapshot import load_world
    from workers.storage import images

    client = _client(args)
    status = 0
    for ref in args.images:
        try:
            client.remove_image(ref, force=args.force)
        except MoorError as err:
            print_error(err.message)
            status = 1
            continue
        print(f"Untagged: {ref}")
        # The engine decided first (refused while used); the files go once it forgot it.
        world, _ = load_world(client.redis, client.keys)
        for info in images.list_images(data_root()):
            if info.id not in world.images:
                images.remove_image(data_root(), info.id)
                print(f"Deleted: {info.id}")
    return status


def _ls(args: argparse.Namespace) -> int:
    import msgspec

    from engine.config import data_root
    from workers.storage import images
    from workers.storage.imageconfig import docker_names

    found = images.list_images(data_root())
    if args.format == "json":
        for info in found:  # the image config under Docker's names, as `docker inspect`
            print(json.dumps({**msgspec.to_builtins(info), "config": docker_names(info.config)}))
        return 0
    print(f"{'REPOSITORY':<24} {'TAG':<12} {'IMAGE ID':<14} {'SIZE':>10}")
    for info in found:
        for tag in info.repo_tags or ("<none>:<none>",):
            repo, _, version = tag.rpartition(":")
            print(f"{repo:<24} {version:<12} {info.id[7:19]:<14} {info.size:>10}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    from engine.config import data_root
    from engine.core.names import resolve
    from engine.errors import MoorError
    from engine.snapshot import load_world
    from projections.views.points import parse_time
    from workers.proc.logs import NO_READING, fixed_time, read_logs

    client = _client(args)
    world, _ = load_world(client.redis, client.keys)
    ctr = resolve(world, args.container)
    if ctr.host_config.log_config.type == "none":
        raise MoorError(NO_READING)
    now = time.time_ns()
    since = parse_time(args.since, now) if args.since else None
    until = parse_time(args.until, now) if args.until else None
    cdir = os.path.join(data_root(), "containers", ctr.id)
    path = os.path.join(cdir, f"{ctr.id}-json.log")
    if not os.path.exists(path):
        return 0
    for stream, stamp, line in read_logs(path, tail=args.tail, since=since, until=until,
                                         follow=args.follow, details=args.details,
                                         state_dir=os.path.join(cdir, "state")):
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(f"{fixed_time(stamp)} {line}" if args.timestamps else line)
        out.flush()
    return 0


def _ls_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=guard(_ls))


def _rm_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=guard(_rm))


def register(sub: Any) -> None:
    """Add `image`, its `images`/`rmi` aliases and `logs` to `moor`'s parser."""
    p = sub.add_parser("image", help="import, load, list and remove images on this host")
    isub = p.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    q = isub.add_parser("import", help="import a rootfs tarball as an image")
    q.add_argument("tarball")
    q.add_argument("ref", nargs="?")
    q.set_defaults(func=guard(_import))
    q = isub.add_parser("load", help="load a `docker save` archive or an OCI layout")
    q.add_argument("-i", "--input", required=True)
    q.set_defaults(func=guard(_load))
    _ls_flags(isub.add_parser("ls", help="list images"))
    _rm_flags(isub.add_parser("rm", help="remove images"))
    _ls_flags(sub.add_parser("images", help="list images (moor image ls)"))
    _rm_flags(sub.add_parser("rmi", help="remove images (moor image rm)"))
    p = sub.add_parser("logs", help="print a container's logs")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("--details", action="store_true", help="show the json-file attrs")
    p.add_argument("--since", help="unix s, RFC3339 or a duration ago (10m)")
    p.add_argument("--until", help="unix s, RFC3339 or a duration ago (10m)")
    p.add_argument("-n", "--tail", type=lambda v: None if v == "all" else int(v))
    p.add_argument("container")
    p.set_defaults(func=guard(_logs), long_running=True)
