"""parse_signal accepts Docker's spellings and rejects the rest with Docker's text."""

from __future__ import annotations

import signal

import pytest

from workers.process import InvalidSignal, exit_code_of, parse_signal


@pytest.mark.parametrize(("raw", "expected"), [
    ("SIGTERM", signal.SIGTERM), ("TERM", signal.SIGTERM), ("term", signal.SIGTERM),
    ("15", signal.SIGTERM), ("SIGKILL", signal.SIGKILL), ("KILL", signal.SIGKILL),
    ("9", signal.SIGKILL), ("sighup", signal.SIGHUP), ("USR1", signal.SIGUSR1),
    ("CLD", signal.SIGCHLD), ("IOT", signal.SIGABRT), (" INT ", signal.SIGINT),
    (15, signal.SIGTERM), ("RTMIN", signal.SIGRTMIN), ("RTMIN+3", signal.SIGRTMIN + 3),
    ("SIGRTMAX-2", signal.SIGRTMAX - 2), ("RTMAX", signal.SIGRTMAX), ("64", 64),
])
def test_parses_names_and_numbers(raw: str | int, expected: int) -> None:
    assert parse_signal(raw) == expected


@pytest.mark.parametrize("raw", [
    "", "0", "65", "100", "-9", "SIG", "FOO", "SIGFOO", "9x", "RTMIN-1", "RTMAX+1",
    "RTMIN+16", "RTMAX-15", "TERM;", "SIG_DFL", "Signals",
])
def test_rejects_with_docker_text(raw: str) -> None:
    with pytest.raises(InvalidSignal) as err:
        parse_signal(raw)
    assert str(err.value) == f"invalid signal: {raw}"


def test_invalid_signal_is_a_value_error() -> None:
    assert issubclass(InvalidSignal, ValueError)


@pytest.mark.parametrize(("status", "expected"), [
    (0, (0, None)), (7 << 8, (7, None)), (signal.SIGKILL, (137, 9)),
    (signal.SIGTERM, (143, 15)),
])
def test_exit_code_of_wait_status(status: int, expected: tuple[int, int | None]) -> None:
    assert exit_code_of(status) == expected
