"""The pure rules of attach: the supervisor's hello line, Docker's end-of-input rule,
detach-key detection, resize lines, and the create fields (issue 10)."""

from __future__ import annotations

import copy

import pytest

from commands.options import DEFAULT_DETACH_KEYS, detach_at, keys_tail
from moor.api.create import container_spec
from workers.proc.console import parse_resize, resize_line
from workers.proc.hub import Want, hello, input_end, parse_hello


@pytest.mark.parametrize("want", [Want(), Want(stdin=True, stdout=True, stderr=True,
                                              replay=True, raw=True),
                                  Want(stdout=True, replay=True)])
def test_hello_round_trips(want: Want) -> None:
    line = hello(want)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_hello(line.rstrip(b"\n")) == want


@pytest.mark.parametrize("line", [b"", b"resize 1 2", b"attach stdin bogus", b"ATTACH"])
def test_anything_else_is_not_a_hello(line: bytes) -> None:
    assert parse_hello(line) is None


@pytest.mark.parametrize(("stdin", "tty", "once", "end"), [
    (False, False, True, "none"),  # an output-only attacher half-closes at once (docker CLI)
    (True, False, True, "close-stdin"),  # docker run -i: EOF closes the container's stdin
    (True, False, False, "detach"),  # without StdinOnce the stdin stays for the next one
    (True, True, True, "detach"),  # a TTY's stdin is never closed by an attacher
    (True, True, False, "detach"),
])
def test_end_of_input_follows_dockers_copy_streams(stdin: bool, tty: bool, once: bool,
                                                    end: str) -> None:
    assert input_end(stdin, tty, once) == end


def test_detach_keys_are_found_within_and_across_reads() -> None:
    keys = DEFAULT_DETACH_KEYS
    assert detach_at(b"", b"ls\r", keys) is None
    assert detach_at(b"", b"ab\x10\x11cd", keys) == 2  # "ab" still goes to the process
    seen = keys_tail(b"", b"xy\x10", keys)
    assert seen == b"\x10"
    assert detach_at(seen, b"\x11", keys) == 0
    assert detach_at(b"", b"\x10\x11", b"") is None  # no keys without a TTY


def test_resize_lines() -> None:
    assert parse_resize(resize_line(33, 97).strip()) == (33, 97)
    for bad in (b"resize 1", b"resize a 2", b"resize 70000 2", b"size 1 2"):
        assert parse_resize(bad) is None


def test_create_takes_the_stdin_and_tty_fields() -> None:
    body = {"Image": "busybox", "Tty": True, "OpenStdin": True, "StdinOnce": True,
            "AttachStdin": True, "AttachStdout": True, "AttachStderr": False,
            "HostConfig": {"ConsoleSize": [24, 80]}}
    config, _ = container_spec(copy.deepcopy(body))
    assert (config.tty, config.open_stdin, config.stdin_once, config.attach_stdin,
            config.attach_stdout, config.attach_stderr) == (True, True, True, True, True,
                                                            False)
    plain, _ = container_spec({"Image": "busybox"})
    assert not (plain.tty or plain.open_stdin or plain.stdin_once or plain.attach_stdin)
