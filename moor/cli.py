"""The `moor` program: one argument parser, one dispatcher, one error printer.

Every subcommand lives in a `moor.*cli` module (lifecycle, read, host, program) that adds
its flags to this parser and imports what it needs only when it runs: a read (`moor ps`)
or a lifecycle call (`moor start`) never imports the runtime (rq, pyroute2, aiohttp, the
workers). `python -m moor.cli` and the `moor` console script both enter at `main`.

Exit codes: 0 on success; a MoorError's own code (Docker's status, engine.errors); 130 on
Ctrl-C (0 for the commands that follow a stream until Ctrl-C); 2 for a bad command line.
Errors print through moor.failures, the one printer.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from moor import (
    admincli,
    attachcli,
    buildcli,
    commitcli,
    cpcli,
    execcli,
    hostcli,
    lifecyclecli,
    networkcli,
    programcli,
    pullcli,
    readcli,
    statscli,
    volumecli,
)

__all__ = ["build_parser", "command_word", "main"]


_VALUED_GLOBALS = frozenset(("--redis-url", "--actor", "--reason", "--timeout"))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Return the `moor` parser tree (each subcommand sets `func(args) -> int`).

    With `only`, the other subcommands are left out: building all ~30 costs ~6 ms
    (argparse looks up translations for every parser), a tenth of a `moor ps`.
    """
    parser = argparse.ArgumentParser(prog="moor", description="event-sourced container engine")
    parser.add_argument("--redis-url", help="default: MOOR_REDIS_URL, else the embedded Redis")
    parser.add_argument("--actor", default=os.environ.get("MOOR_ACTOR", os.environ.get(
        "USER", "moor")), help="who asks (recorded with every command)")
    parser.add_argument("--reason", default="", help="why (recorded with every command)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(log_level=logging.WARNING, long_running=False)
    real = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub: Any = real if only is None else _Only(real, only)
    for module in (lifecyclecli, execcli, attachcli, readcli, hostcli, programcli, admincli,
                   statscli, cpcli, commitcli, volumecli, buildcli, pullcli, networkcli):
        module.register(sub)
    if only is not None and not sub.found:
        return build_parser()  # not a command: the full parser says so, listing them all
    return parser


class _Skipped:
    """Stands in for the parser of a subcommand that is not being run: it takes the
    subcommand's definition (add_argument, set_defaults, add_subparsers...) and keeps none."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class _Only:
    """The subparsers action, adding only the subcommand named on the command line."""

    def __init__(self, real: Any, name: str) -> None:
        self.real, self.name, self.found = real, name, False

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name != self.name:
            return _Skipped()
        self.found = True
        return self.real.add_parser(name, **kwargs)


def command_word(words: Sequence[str]) -> str | None:
    """Return the subcommand named in `words` (after the global flags), or None."""
    i = 0
    while i < len(words):
        word = words[i]
        if word in _VALUED_GLOBALS:
            i += 2
        elif word.startswith("-"):
            if word in ("-h", "--help"):
                return None
            i += 1
        else:
            return word
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `moor` command; Docker's error texts on stderr, non-zero exit on failure."""
    # A `moor` call is short: no cyclic GC while redis-py and the schema import (~30,000
    # objects, scanned again and again), and none at exit (gc.freeze: the interpreter's
    # final collection skips them). Together ~40 ms of a ~170 ms call on this VM. The
    # programs and the commands that follow a stream turn it back on.
    gc.disable()
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(command_word(words)).parse_args(words)
    if args.long_running:
        gc.enable()
    logging.basicConfig(level=logging.INFO if args.verbose else args.log_level,
                        format="%(asctime)s %(name)s %(message)s")
    try:
        return int(args.func(args))  # every handler is wrapped by moor.failures.guard
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
