"""`moor pull`: pull an image from a registry into this host's store, with progress bars.

The pull runs here (it writes this host's image store, as `moor image import` does) and
records the image with the engine. On a terminal each layer gets a rich progress bar; when
the output is not a terminal, the state changes are printed as lines, as `docker pull`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from moor.failures import guard

__all__ = ["register"]


class _Bars:
    """Turn Docker's JSON progress messages into rich bars (one task per layer)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.console = Console(stderr=False)
        self.live = self.console.is_terminal
        self.progress = Progress(TextColumn("{task.fields[layer]}"),
                                 TextColumn("{task.description:<18}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(),
                                 console=self.console, disable=not self.live)
        self.tasks: dict[str, Any] = {}

    def __call__(self, m: dict[str, Any]) -> None:
        ident, text = m.get("id", ""), m.get("status", "")
        if not self.live:
            if not m.get("progressDetail"):  # byte counts only make sense as a bar
                print(f"{ident}: {text}" if ident else text, flush=True)
            return
        if not ident or len(ident) != 12:
            self.progress.console.print(f"{ident}: {text}" if ident else text)
            return
        task = self.tasks.get(ident)
        if task is None:
            task = self.tasks[ident] = self.progress.add_task(text, layer=ident, total=None)
        detail = m.get("progressDetail") or {}
        if "total" in detail and detail["total"] > 0:
            self.progress.update(task, description=text, completed=detail.get("current", 0),
                                 total=detail["total"])
        else:
            self.progress.update(task, description=text)
            if text in ("Pull complete", "Already exists") and (
                    self.progress.tasks[task].total is None):
                self.progress.update(task, completed=1, total=1)  # a full bar, no bytes


def _pull(args: argparse.Namespace) -> int:
    import asyncio
    import getpass

    from engine.config import data_root
    from moor.api.distribution import register_pulled
    from moor.connect import client_for
    from moor.distribution.auth import AuthConfig
    from moor.distribution.manifest import parse_platform
    from moor.distribution.pull import pull
    from moor.distribution.reference import parse_reference
    from moor.distribution.settings import Settings

    ref = parse_reference(args.image)
    auth = AuthConfig()
    if args.username:
        password = sys.stdin.readline().rstrip("\n") if args.password_stdin else (
            getpass.getpass(f"Password for {args.username}: "))
        auth = AuthConfig(username=args.username, password=password)
    bars = _Bars()
    emit = bars if not args.quiet else (lambda m: None)
    with bars.progress:
        result = asyncio.run(pull(data_root(), ref, auth, parse_platform(args.platform),
                                  Settings.from_env(), emit))
    client = client_for(args.redis_url, actor=args.actor, reason=args.reason,
                        timeout=args.timeout)
    register_pulled(client, result.info, ref, result.digest)
    if args.quiet:
        print(ref.familiar)
        return 0
    print(f"Digest: {result.digest}")
    news = "Image is up to date for" if result.up_to_date else "Downloaded newer image for"
    print(f"Status: {news} {ref.familiar}")
    print(ref.familiar)
    return 0


def register(sub: Any) -> None:
    """Add `pull` to `moor`'s parser."""
    p = sub.add_parser("pull", help="pull an image from a registry")
    p.add_argument("--platform", default="", help="os/arch[/variant] (default linux/amd64)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("-u", "--username", default="")
    p.add_argument("--password-stdin", action="store_true")
    p.add_argument("image")
    p.set_defaults(func=guard(_pull))
