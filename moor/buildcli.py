"""`moor build [-t] [-f] [--build-arg] [--target] [--no-cache] [--force-rm] [-q] PATH`.

The same builder as `POST /build` (moor.building), run here on this host: the context is
the directory itself (`.dockerignore` applies as it is read), RUN steps go through the
engine like any container, and the output is the classic builder's text.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from moor.failures import guard, print_error

__all__ = ["register"]


def _build_args(values: list[str]) -> dict[str, str]:
    """`--build-arg K=V`, or `--build-arg K` to take K from this environment (if set)."""
    out = {}
    for item in values:
        key, eq, value = item.partition("=")
        if eq:
            out[key] = value
        elif key in os.environ:
            out[key] = os.environ[key]
    return out


def _build(args: argparse.Namespace) -> int:
    from engine.config import data_root
    from moor.building import Builder, BuildOptions, prepare, quiet
    from moor.connect import client_for

    context = os.path.abspath(args.path)
    if not os.path.isdir(context):
        print_error(f'unable to prepare context: path "{args.path}" not found')
        return 1
    text = None
    name = "Dockerfile"
    if args.file:
        path = os.path.abspath(args.file)
        inside = os.path.commonpath([path, context]) == context
        name = os.path.relpath(path, context) if inside else os.path.basename(path)
        if not inside:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
    options = BuildOptions(dockerfile=name, tags=args.tag or [],
                           build_args=_build_args(args.build_arg or []), target=args.target,
                           nocache=args.no_cache, rm=args.rm, forcerm=args.force_rm,
                           labels=dict(lab.partition("=")[::2] for lab in args.label or []),
                           quiet=args.quiet)
    prepared = prepare(context, options, dockerfile_text=text)
    client = client_for(args.redis_url, actor=args.actor, reason=args.reason,
                        timeout=args.timeout)
    messages: Any = Builder(client, data_root(), prepared, options).run()
    for msg in quiet(messages) if options.quiet else messages:
        if "error" in msg:
            print_error(msg["error"])
            return int(msg.get("errorDetail", {}).get("code") or 1)
        if "stream" in msg:
            sys.stdout.write(msg["stream"])
            sys.stdout.flush()
    return 0


def register(sub: Any) -> None:
    """Add `build` to `moor`'s parser."""
    p = sub.add_parser("build", help="build an image from a Dockerfile (classic builder)")
    p.add_argument("-t", "--tag", action="append", help="name[:tag] (repeatable)")
    p.add_argument("-f", "--file", help="the Dockerfile (default: PATH/Dockerfile)")
    p.add_argument("--build-arg", action="append", metavar="KEY[=VALUE]")
    p.add_argument("--target", default="", help="the stage to build")
    p.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    p.add_argument("--rm", action=argparse.BooleanOptionalAction, default=True,
                   help="remove intermediate containers after a successful build")
    p.add_argument("--force-rm", action="store_true",
                   help="always remove intermediate containers")
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=guard(_build))
