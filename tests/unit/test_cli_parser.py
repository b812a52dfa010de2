"""The one `moor` parser: the trimmed tree parses as the whole one; commands stay light.

A `moor` call builds only the subcommand it runs; these tests compare that against the
full tree, and run real `moor` processes against an unreachable Redis (127.0.0.1:1, never
a server) to see what they import and how they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moor.cli import build_parser, command_word

REPO = Path(__file__).resolve().parents[2]
NOWHERE = "redis://127.0.0.1:1/0"
RUNTIME = ("rq", "pyroute2", "aiohttp", "workers", "moor.api", "moor.up")

ARGVS = [
    ["ps", "-aq", "--filter", "status=exited"],
    ["--actor", "me", "--reason", "why", "start", "a", "b"],
    ["--timeout", "5", "stop", "-t", "1", "web"],
    ["run", "-d", "--name", "web", "-p", "8080:80", "busybox", "httpd", "-f", "-p", "80"],
    ["logs", "--tail", "1", "-f", "web"],
    ["image", "import", "rootfs.tar", "busybox"],
    ["rmi", "-f", "busybox"],
    ["images", "--format", "json"],
    ["-v", "api", "--socket", "/tmp/x.sock", "--prefix", "p"],
    ["--redis-url", "redis://a", "worker", "--no-reconcile"],
    ["reducer", "--lease-ms", "800", "--no-default-network"],
    ["up", "--no-reconcile"],
    ["events", "--since", "10m", "--until", "0s"],
]


@pytest.mark.parametrize("argv", ARGVS, ids=lambda argv: " ".join(argv))
def test_the_trimmed_parser_parses_like_the_whole_tree(argv: list[str]) -> None:
    word = command_word(argv)
    assert word is not None and word in argv
    trimmed = vars(build_parser(word).parse_args(argv))
    whole = vars(build_parser().parse_args(argv))
    assert trimmed.pop("func").__doc__ == whole.pop("func").__doc__
    assert trimmed == whole


def test_global_flags_also_follow_the_program_subcommands() -> None:
    args = build_parser().parse_args(["--redis-url", "redis://a", "--timeout", "5", "api"])
    assert (args.redis_url, args.timeout, args.verbose) == ("redis://a", 5.0, False)
    args = build_parser().parse_args(["api", "--redis-url", "redis://b", "--timeout", "7",
                                      "-v"])
    assert (args.redis_url, args.timeout, args.verbose) == ("redis://b", 7.0, True)


def test_an_unknown_command_gets_the_whole_list() -> None:
    assert command_word(["--timeout", "3", "-v", "nope"]) == "nope"
    assert command_word(["--help"]) is None
    parser = build_parser("nope")
    with pytest.raises(SystemExit):
        parser.parse_args(["nope"])
    assert "ps" in parser.format_help() and "up" in parser.format_help()


def moor(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOR_")}
    env["MOOR_REDIS_URL"] = NOWHERE
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "moor.cli", *argv],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def imported(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.parametrize("argv", [["ps"], ["start", "web"], ["inspect", "web"]])
def test_reads_and_lifecycle_calls_import_no_runtime(argv: list[str]) -> None:
    done = moor("--timeout", "1", *argv)
    modules = imported(done.stderr)
    # engine.resp: the short commands' redis-py-free connection (moor.connect)
    assert "engine.resp" in modules, "the command did reach for Redis"
    loaded = sorted(m for m in modules if any(m == r or m.startswith(r + ".") for r in RUNTIME))
    assert not loaded, loaded


@pytest.mark.parametrize("argv", [["ps"], ["logs", "web"]])
def test_an_unreachable_redis_is_dockers_503_text(argv: list[str]) -> None:
    # ps meets it in the projections' adapter, logs in the snapshot reader: one text.
    done = moor(*argv)
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert errors and errors[0].startswith(
        "Error response from daemon: cannot reach the engine's Redis:"), done.stderr[-2000:]
    assert done.returncode == 1 and "Traceback" not in done.stderr
