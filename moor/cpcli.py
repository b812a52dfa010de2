"""`moor cp` and `moor container prune`: copy files to and from containers, remove stopped ones.

Like `moor logs` and `moor stats`, `cp` works on this host's files: it runs the same copy
helper as the API (workers.storage.ctrcopy: a private mount namespace, chrooted into the
container's rootfs, mounted on demand when the container is stopped). The host side
follows the docker CLI: an existing directory receives the copy under the source's base
name, any other destination is the copy's new name; `-` is a tar on stdin or stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from typing import IO, Any

from moor.failures import guard

__all__ = ["register", "split_ref"]

_DIR_BIT = 1 << 31  # Go's os.ModeDir in the stat line


def split_ref(arg: str) -> tuple[str, str]:
    """Split CONTAINER:PATH into (container, path); a host path gives ("", arg)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return "", arg  # the docker CLI: a local path may contain ":" after a "/" or "."
    name, _, path = arg.partition(":")
    return name, path


def _helper(args: argparse.Namespace, ref: str, op: str, path: str) -> list[str]:
    from engine.config import data_root
    from moor.connect import redis_and_keys
    from projections.stream import load_live
    from projections.views.inspect import find_container
    from workers.storage.ctrcopy import container_helper

    redis, keys = redis_and_keys(args.redis_url)
    world = load_live(redis, keys)[0]
    return container_helper(data_root(), find_container(world, ref), world.images, op, path,
                            no_overwrite=True, ref=ref)


def _run(argv: list[str], stdin: IO[bytes] | None = None) -> bytes:
    """Run a helper to the end (stdin: a file it reads directly); return its stdout."""
    from workers.storage.ctrcopy import helper_error

    done = subprocess.run(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, check=False)
    if done.returncode != 0:
        raise helper_error(done.stderr)
    return done.stdout


def _stat(args: argparse.Namespace, ref: str, path: str) -> dict[str, Any] | None:
    """Return the stat of path in the container, or None when it does not exist."""
    import json

    from engine.errors import NotFound

    try:
        return dict(json.loads(_run(_helper(args, ref, "stat", path)).split(b"\n", 1)[0]))
    except NotFound:
        return None


def _from_container(args: argparse.Namespace, ref: str, src: str, dst: str) -> int:
    from engine.errors import InvalidParameter

    with subprocess.Popen(_helper(args, ref, "get", src), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline()
        if not line:
            _finish(proc)
        if dst == "-":
            shutil.copyfileobj(proc.stdout, sys.stdout.buffer)
            sys.stdout.flush()
        else:
            if not os.path.isdir(os.path.dirname(os.path.abspath(dst)) or "/"):
                raise InvalidParameter(f"destination directory {os.path.dirname(dst)} "
                                       "does not exist")
            into_dir = os.path.isdir(dst)
            target = dst if into_dir else os.path.dirname(os.path.abspath(dst))
            rename = None if into_dir else os.path.basename(os.path.abspath(dst))
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                for member in tar:
                    if rename is not None:  # the copy's top component takes dst's name
                        head, sep, rest = member.name.partition("/")
                        member.name = rename + sep + rest if head != "." else \
                            os.path.join(rename, rest)
                    tar.extract(member, target, filter="tar")
        _finish(proc)
    return 0


def _finish(proc: subprocess.Popen[bytes]) -> None:
    from workers.storage.ctrcopy import helper_error

    assert proc.stderr is not None
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise helper_error(err)


def _to_container(args: argparse.Namespace, src: str, ref: str, dst: str) -> int:
    from engine.errors import NotFound

    if src == "-":
        _run(_helper(args, ref, "put", dst), sys.stdin.buffer)
        return 0
    if not os.path.lexists(src):
        raise NotFound(f"stat {src}: no such file or directory")
    stat = _stat(args, ref, dst)
    if stat is not None and stat["mode"] & _DIR_BIT:
        into, name = dst, os.path.basename(os.path.abspath(src))
    else:  # a new name, or a file replaced: extract into the parent under dst's name
        into, name = os.path.dirname(dst.rstrip("/")) or "/", os.path.basename(dst.rstrip("/"))
    with subprocess.Popen(_helper(args, ref, "put", into), stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as proc:
        assert proc.stdin is not None
        try:  # streamed: the tar is never held whole in memory
            with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.add(src, arcname=name)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the helper stopped reading: its error says why
        _finish(proc)
    return 0


def _cp(args: argparse.Namespace) -> int:
    from engine.errors import InvalidParameter

    (src_ctr, src), (dst_ctr, dst) = split_ref(args.src), split_ref(args.dst)
    if src_ctr and not dst_ctr:
        return _from_container(args, src_ctr, src, dst)
    if dst_ctr and not src_ctr:
        return _to_container(args, args.src, dst_ctr, dst)
    raise InvalidParameter("copying between containers is not supported" if src_ctr else
                           "must specify at least one container source")


def _prune(args: argparse.Namespace) -> int:
    import time

    from engine.config import data_root
    from moor.cliargs import client_of, confirm, live_world
    from moor.pruning import prune_containers
    from moor.statscli import human_size
    from projections.views.filters import parse_filter_flags

    if not args.force and not confirm("This will remove all stopped containers."):
        return 0
    client = client_of(args)
    deleted, reclaimed = prune_containers(client, live_world(client),
                                          parse_filter_flags(args.filter), data_root(),
                                          time.time_ns())
    if deleted:
        print("Deleted Containers:\n" + "\n".join(deleted) + "\n")
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0


def register(sub: Any) -> None:
    """Add `cp` and `container prune` to `moor`'s parser."""
    p = sub.add_parser("cp", help="copy files between a container and the host (docker cp)")
    p.add_argument("src", metavar="SRC", help="CONTAINER:PATH, a host path, or - (a tar)")
    p.add_argument("dst", metavar="DST", help="CONTAINER:PATH, a host path, or - (a tar)")
    p.set_defaults(func=guard(_cp))
    p = sub.add_parser("container", help="manage containers")
    prune = p.add_subparsers(dest="container_command", required=True).add_parser(
        "prune", help="remove all stopped containers")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    prune.add_argument("--filter", action="append", help="label=, label!=, until=")
    prune.set_defaults(func=guard(_prune))
