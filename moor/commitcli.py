"""`moor diff CONTAINER` and `moor commit [-m] [-a] [-c] [-p] CONTAINER [REPO[:TAG]]`.

Both read the container's upper dir on this host (moor.committing), so they load the
storage modules only when run.
"""

from __future__ import annotations

import argparse
from typing import Any

from moor.failures import guard

__all__ = ["register"]

_LETTER = {0: "C", 1: "A", 2: "D"}


def _world(args: argparse.Namespace) -> Any:
    from moor.connect import client_for
    from projections.stream import load_live

    client = client_for(args.redis_url, actor=args.actor, reason=args.reason,
                        timeout=args.timeout)
    return client, load_live(client.redis, client.keys)[0]


def _diff(args: argparse.Namespace) -> int:
    from engine.config import data_root
    from moor.committing import container_changes

    _, world = _world(args)
    for change in container_changes(data_root(), world, args.container):
        print(f"{_LETTER[change.kind]} {change.path}")
    return 0


def _commit(args: argparse.Namespace) -> int:
    from engine.config import data_root
    from moor.committing import commit

    client, world = _world(args)
    print(commit(client, world, data_root(), args.container, reference=args.reference or "",
                 comment=args.message, author=args.author, changes=args.change or [],
                 pause=args.pause))
    return 0


def register(sub: Any) -> None:
    """Add `diff` and `commit` to `moor`'s parser."""
    p = sub.add_parser("diff", help="list the files a container changed (A/C/D)")
    p.add_argument("container")
    p.set_defaults(func=guard(_diff))
    p = sub.add_parser("commit", help="make an image of a container's changes")
    p.add_argument("-m", "--message", default="", help="the commit message")
    p.add_argument("-a", "--author", default="", help='e.g. "Jane <jane@example.com>"')
    p.add_argument("-c", "--change", action="append",
                   help="a Dockerfile instruction (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, "
                   "USER, VOLUME, WORKDIR, STOPSIGNAL, ONBUILD)")
    p.add_argument("-p", "--pause", action=argparse.BooleanOptionalAction, default=True,
                   help="pause the container while committing (default true)")
    p.add_argument("container")
    p.add_argument("reference", nargs="?", metavar="REPO[:TAG]")
    p.set_defaults(func=guard(_commit))
