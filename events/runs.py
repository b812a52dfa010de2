"""One run of a container process: what its supervisor is told and reports, off the streams.

- `SpawnReply` (`SpawnResult` or `SpawnFailure`): the supervisor's one message to the
  worker that forked it, on a pipe: the process exec'd, or why it did not.
- `ExitStatus`: how the run ended, kept in the container's state dir as `exit.json` for
  the worker's reconcile and the CLI.
- `StopRequest`: a stop in progress, kept as `stop.json`, which the supervisor reads to
  SIGKILL the run at its deadline.

A supervisor outlives the worker that started it (and an upgrade of it), so the files
are read by other versions: their fields follow the schema rules. The exit itself
reaches the engine as a `ReportProcessExited` command. All are encoded by the one codec
(`commands.codec`) and have golden files.
"""

from __future__ import annotations

import msgspec

__all__ = ["ExitStatus", "SpawnFailure", "SpawnReply", "SpawnResult", "StopRequest"]


class ExitStatus(msgspec.Struct, frozen=True, kw_only=True):
    """How one run of the container process ended."""

    exit_code: int
    signal: int | None = None  # the signal that killed it, if any
    oom_killed: bool = False
    pid: int = 0
    started_at_ns: int = 0
    finished_at_ns: int = 0
    error: str | None = None  # set when the process never started (exec failed)
    generation: int = 0  # the start it belongs to (0: written before generations were kept)


class StopRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A stop in progress: SIGKILL the run once deadline_ns passes if it still runs."""

    signal: int  # what was sent first (for the supervisor's log)
    deadline_ns: int  # CLOCK_MONOTONIC (time.monotonic_ns), the same in every process
    started_at_ns: int  # the run it applies to, as in the pid file: a later run ignores it


class _Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of the supervisor's answer to its caller."""


class SpawnResult(_Reply, tag="SpawnResult"):
    """The process exec'd: its host pid, its supervisor's pid, when it started."""

    pid: int
    supervisor_pid: int
    started_at_ns: int


class SpawnFailure(_Reply, tag="SpawnFailure"):
    """The process did not start: the container exit code Docker gives it, and why."""

    container_exit_code: int
    message: str


SpawnReply = SpawnResult | SpawnFailure
