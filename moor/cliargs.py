"""What the `moor` subcommands share: the client for the global flags, the live world, a
prune's confirmation, `k=v` flag lists. Imports stay lazy (a short command loads little)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commands.client import Client
    from engine.core.state import World

__all__ = ["client_of", "confirm", "kv_pairs", "live_world"]


def client_of(args: argparse.Namespace, lite: bool = False) -> Client:
    """The client `--redis-url`, `--actor`, `--reason` and `--timeout` ask for."""
    from moor.connect import client_for

    return client_for(args.redis_url, actor=args.actor, reason=args.reason,
                      timeout=args.timeout, lite=lite)


def live_world(client: Any) -> World:
    """The state as the reducer last wrote it, with the facts recorded since folded in."""
    from projections.stream import load_live

    return load_live(client.redis, client.keys)[0]


def confirm(warning: str) -> bool:
    """Ask as the docker CLI does before a prune; True for y or yes."""
    sys.stdout.write(f"WARNING! {warning}\nAre you sure you want to continue? [y/N] ")
    sys.stdout.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def kv_pairs(items: list[str] | None) -> dict[str, str]:
    """`--label k=v` / `-o k=v` flags as a dict (a bare key maps to "")."""
    return dict(item.partition("=")[::2] for item in items or ())
