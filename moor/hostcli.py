"""Host-side `moor` subcommands: worker, image import/load/ls/rm, logs.

They touch this host's files, so they live with the workers; `moor` execs this module
(`python -m moor.hostcli ...`) rather than importing it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import msgspec
import redis

from commands.client import Client
from engine.config import data_root, key_prefix
from engine.errors import MoorError, Unavailable
from engine.keys import keys_for
from events import specs
from workers.proc.logs import read_logs
from workers.storage import images
from workers.storage.archives import load_archive

__all__ = ["main"]


def _client(args: argparse.Namespace) -> Client:
    from moor.embedded import resolve_redis_url

    url = resolve_redis_url(args.redis_url)
    return Client(redis.Redis.from_url(url), keys_for(prefix=key_prefix()),
                  actor=args.actor, reason=args.reason)


def register(client: Client, info: images.ImageInfo) -> None:
    """Make an image stored on this host known to the engine (ImageRegistered)."""
    config = specs.ImageConfig(**msgspec.structs.asdict(info.config))
    client.register_image(image_id=info.id, repo_tags=info.repo_tags, config=config,
                          layers=info.layers, size=info.size, created=images.created_ns(info))


def _import(args: argparse.Namespace) -> int:
    info = images.import_rootfs(data_root(), args.tarball, args.ref)
    register(_client(args), info)
    print(info.id)
    return 0


def _load(args: argparse.Namespace) -> int:
    client = _client(args)
    for info in load_archive(data_root(), args.input):
        register(client, info)
        for tag in info.repo_tags or (info.id,):
            print(f"Loaded image: {tag}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    from engine.snapshot import load_world

    client = _client(args)
    status = 0
    for ref in args.images:
        try:
            client.remove_image(ref, force=args.force)
        except MoorError as err:
            print(f"Error response from daemon: {err.message}", file=sys.stderr)
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
    found = images.list_images(data_root())
    if args.format == "json":
        for info in found:
            print(json.dumps(msgspec.to_builtins(info)))
        return 0
    print(f"{'REPOSITORY':<24} {'TAG':<12} {'IMAGE ID':<14} {'SIZE':>10}")
    for info in found:
        for tag in info.repo_tags or ("<none>:<none>",):
            repo, _, version = tag.rpartition(":")
            print(f"{repo:<24} {version:<12} {info.id[7:19]:<14} {info.size:>10}")
    return 0


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    from engine.core.names import resolve
    from engine.snapshot import load_world

    world, _ = load_world(client.redis, client.keys)
    ctr = resolve(world, args.container)
    cdir = os.path.join(data_root(), "containers", ctr.id)
    path = os.path.join(cdir, f"{ctr.id}-json.log")
    if not os.path.exists(path):
        return 0
    for stream, stamp, line in read_logs(path, tail=args.tail, timestamps=args.timestamps,
                                         follow=args.follow,
                                         state_dir=os.path.join(cdir, "state")):
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(f"{stamp} {line}" if args.timestamps else line)
        out.flush()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moor")
    parser.add_argument("--redis-url")
    parser.add_argument("--actor", default=os.environ.get("USER", "moor"))
    parser.add_argument("--reason", default="")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("image")
    isub = p.add_subparsers(dest="image_command", required=True)
    q = isub.add_parser("import")
    q.add_argument("tarball")
    q.add_argument("ref", nargs="?")
    q.set_defaults(func=_import)
    q = isub.add_parser("load")
    q.add_argument("-i", "--input", required=True)
    q.set_defaults(func=_load)
    q = isub.add_parser("ls")
    q.add_argument("--format", choices=("table", "json"), default="table")
    q.set_defaults(func=_ls)
    q = isub.add_parser("rm")
    q.add_argument("-f", "--force", action="store_true")
    q.add_argument("images", nargs="+")
    q.set_defaults(func=_rm)
    p = sub.add_parser("logs")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("-t", "--timestamps", action="store_true")
    p.add_argument("-n", "--tail", type=lambda v: None if v == "all" else int(v))
    p.add_argument("container")
    p.set_defaults(func=_logs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MoorError as err:
        print(f"Error response from daemon: {err.message}", file=sys.stderr)
        return err.exit_code
    except redis.ConnectionError as exc:
        down = Unavailable(f"cannot reach the engine's Redis: {exc}")
        print(f"Error response from daemon: {down.message}", file=sys.stderr)
        return down.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
