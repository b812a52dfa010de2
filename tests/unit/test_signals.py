"""events.signals.parse_signal takes Docker's spellings and rejects the rest with Docker's text."""

from __future__ import annotations

import signal

import pytest

from events.signals import parse_signal, signal_name
from workers.proc.process import exit_code_of


@pytest.mark.parametrize(("raw", "expected"), [
    ("SIGTERM", signal.SIGTERM), ("TERM", signal.SIGTERM), ("term", signal.SIGTERM),
    ("15", signal.SIGTERM), ("SIGKILL", signal.SIGKILL), ("KILL", signal.SIGKILL),
    ("9", signal.SIGKILL), ("sighup", signal.SIGHUP), ("USR1", signal.SIGUSR1),
    (" INT ", signal.SIGINT), (15, signal.SIGTERM), ("RTMIN", signal.SIGRTMIN),
    ("SIGRTMIN", signal.SIGRTMIN), ("RTMAX", signal.SIGRTMAX), ("64", 64), (64, 64),
    pytest.param("CLD", signal.SIGCHLD),
    pytest.param("IOT", signal.SIGABRT),
    pytest.param("RTMIN+3", signal.SIGRTMIN + 3),
    pytest.param("SIGRTMAX-2", signal.SIGRTMAX - 2),
])
def test_parses_names_and_numbers(raw: str | int, expected: int) -> None:
    assert parse_signal(raw) == expected


@pytest.mark.parametrize("raw", [
    "", "0", "65", "100", "-9", "SIG", "FOO", "SIGFOO", "9x", "RTMIN-1", "RTMAX+1",
    "RTMIN+16", "RTMAX-15", "TERM;", "SIG_DFL", "Signals", 0, -1, 65,
])
def test_rejects_with_docker_text(raw: str | int) -> None:
    with pytest.raises(ValueError) as err:
        parse_signal(raw)
    assert str(err.value) == f"invalid signal: {raw}"


@pytest.mark.parametrize(("number", "name"), [
    (signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL"), (40, "40"),
])
def test_signal_name(number: int, name: str) -> None:
    assert signal_name(number) == name


@pytest.mark.parametrize(("status", "expected"), [
    (0, (0, None)), (7 << 8, (7, None)), (signal.SIGKILL, (137, 9)),
    (signal.SIGTERM, (143, 15)),
])
def test_exit_code_of_wait_status(status: int, expected: tuple[int, int | None]) -> None:
    assert exit_code_of(status) == expected
