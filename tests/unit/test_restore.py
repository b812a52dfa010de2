"""Docker's restore after a host reboot (§5.4): the decider's rules and the worker's detection.

Decider tests use test_decide's given/when/then. A reboot is `booted("b1")` (the first
boot the engine records), the worker's restores, then `booted("b2")`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from commands import schema as c
from commands.codec import CODEC
from engine.core.state import World, status_of
from engine.snapshot import encode_world_parts, world_from_parts
from events import model as e
from events.runs import ExitStatus
from tests.unit.test_decide import (
    EP,
    A,
    B,
    Step,
    create,
    exited,
    given,
    ignored,
    joined,
    mounted,
    policy,
    rm,
    running,
    start,
    stop,
)
from workers import reconcile as rec

OLD, NEW = "boot-old", "boot-new"


def booted(boot_id: str = OLD) -> Step:
    return "", c.ReportHostBooted(boot_id=boot_id)


def restore(g: int = 1, cid: str = A, boot_id: str = NEW, **exit: Any) -> Step:
    return cid, c.RestoreContainer(boot_id=boot_id, generation=g, **exit)


def died(code: int = 255, at: int = 0) -> Any:
    class _Match:
        def __eq__(self, other: object) -> bool:
            return (isinstance(other, e.ContainerDied) and other.exit_code == code
                    and (not at or other.finished_at == at))

        def __repr__(self) -> str:
            return f"ContainerDied(exit_code={code})"
    return _Match()


RESTART = e.StartInitiated  # a restore's start (a fresh restart manager)
REMOVE = (e.RemovalStarted(force=True), e.ContainerMarkedDead())


# --- the boot itself ----------------------------------------------------------------------

def test_first_boot_is_only_recorded() -> None:
    got = given(*running(host=policy("always"))).when(booted()).then(
        e.HostBooted(boot_id=OLD, previous=""))
    assert got.world.host_boot_id == OLD
    assert status_of(got.container()) == "running"
    assert got.outcome.result.ok and got.outcome.result.container_id == ""


def test_next_boot_records_the_previous_one() -> None:
    given(booted(OLD)).when(booted(NEW)).then(e.HostBooted(boot_id=NEW, previous=OLD))


def test_a_recorded_boot_is_not_recorded_again() -> None:
    given(booted(OLD)).when(booted(OLD)).then(ignored("boot already recorded"))


def test_the_boot_id_survives_the_snapshot() -> None:
    world = given(booted(OLD)).world
    rebuilt = world_from_parts({}, {}, {b"parts": encode_world_parts(world)})
    assert rebuilt.host_boot_id == OLD
    assert world_from_parts({}, {}, {}).host_boot_id == ""


# --- runs the reboot killed ---------------------------------------------------------------

def test_always_running_dies_with_255_and_starts_again() -> None:
    got = given(*running(host=policy("always")), booted()).when(restore()).then(
        e.NetworkDisconnected(generation=1, network="bridge"), died(255, at=0), RESTART)
    start_ev = got.events[-1]
    assert start_ev.generation == 2 and start_ev.manual and not start_ev.restart
    assert start_ev.endpoint.ip_address == EP  # its own address again
    assert got.container().exit_code == 255 and got.container().saga


def test_the_saved_exit_is_recorded_instead_of_255() -> None:
    got = given(*running(host=policy("on-failure")), booted()).when(
        restore(exit_code=0, finished_at=123, pid=4242)).then(
        e.NetworkDisconnected, died(0, at=123))
    assert status_of(got.container()) == "exited"  # on-failure, exit 0: not restarted


def test_the_exit_time_defaults_to_the_restore_command() -> None:
    got = given(*running(), booted()).when(restore())
    assert got.events[1].finished_at == got.outcome.records[1].meta.at


def test_on_failure_lost_exit_restarts() -> None:
    given(*running(host=policy("on-failure")), booted()).when(restore()).then(
        e.NetworkDisconnected, died(255), RESTART)


def test_policy_no_running_is_only_stopped() -> None:
    got = given(*running(), booted()).when(restore()).then(e.NetworkDisconnected, died(255))
    assert status_of(got.container()) == "exited"


def test_unless_stopped_running_restarts() -> None:
    given(*running(host=policy("unless-stopped")), booted()).when(restore()).then(
        e.NetworkDisconnected, died(255), RESTART)


def test_unless_stopped_with_a_stop_in_flight_does_not_restart() -> None:
    given(*running(host=policy("unless-stopped")), booted(), stop()).when(restore()).then(
        e.NetworkDisconnected, died(255))


def test_auto_remove_running_is_removed() -> None:
    got = given(*running(host=policy("no", auto_remove=True)), booted()).when(
        restore()).then(e.NetworkDisconnected, died(255), *REMOVE)
    assert got.container().dead


def test_a_forced_removal_in_flight_is_finished() -> None:
    got = given(*running(host=policy("always")), booted(), rm(force=True)).when(
        restore()).then(e.NetworkDisconnected, died(255), e.ContainerMarkedDead)
    assert got.container().dead


def test_oom_saved_exit_is_recorded() -> None:
    given(*running(), booted()).when(restore(exit_code=137, oom_killed=True)).then(
        e.ContainerOOMKilled, e.NetworkDisconnected, died(137))


# --- stopped containers -------------------------------------------------------------------

def _stopped(name: str, **kw: Any) -> tuple[Step, ...]:
    return (*running(host=policy(name, **kw)), stop(), exited(1, code=143), booted())


def test_always_manually_stopped_restarts() -> None:
    got = given(*_stopped("always")).when(restore()).then(RESTART)
    assert got.container().restart_count == 0 and not got.container().manually_stopped


def test_always_restart_cancelled_by_kill_restarts() -> None:
    steps = (*running(host=policy("always")), ("", c.KillContainer(ref="web")),
             exited(1, code=137), booted())
    assert given(*steps).world.containers[A].restart_cancelled
    given(*steps).when(restore()).then(RESTART)


def test_unless_stopped_manually_stopped_stays_stopped() -> None:
    got = given(*_stopped("unless-stopped")).when(restore()).then(
        ignored("not restarted after the host rebooted (unless-stopped, manually stopped)"))
    assert status_of(got.container()) == "exited"


def test_on_failure_stopped_with_non_zero_exit_restarts() -> None:
    given(*_stopped("on-failure")).when(restore()).then(RESTART)


def test_on_failure_stopped_with_exit_0_stays_stopped() -> None:
    steps = (*running(host=policy("on-failure")), exited(1, code=0), booted())
    given(*steps).when(restore()).then(
        ignored("not restarted after the host rebooted (on-failure, exit code 0)"))


def test_never_started_is_not_restarted() -> None:
    given(create(host=policy("always")), booted()).when(restore(g=0)).then(
        ignored("not restarted after the host rebooted (never started)"))


def test_auto_remove_created_is_removed() -> None:
    given(create(host=policy("no", auto_remove=True)), booted()).when(restore(g=0)).then(
        *REMOVE)


def test_dead_is_left_alone() -> None:
    got = given(create(), rm(), booted()).when(restore(g=0)).then(
        ignored("dead: left for a user rm"))
    assert got.container().dead


# --- back-off and starts in flight ---------------------------------------------------------

def test_always_in_backoff_starts_with_a_fresh_manager() -> None:
    steps = (*running(host=policy("always")), exited(1, code=3), booted())
    assert status_of(given(*steps).world.containers[A]) == "restarting"
    got = given(*steps).when(restore()).then(RESTART)
    ctr = got.container()
    assert ctr.restart_count == 0 and ctr.restart_delay_ms == 0 and ctr.restart_due == 0
    assert ctr.exit_code == 3  # the back-off's exit stays the recorded one


def test_on_failure_in_backoff_with_no_retries_left_stops() -> None:
    steps = (*running(host=policy("on-failure", 1)), exited(1, code=3), booted())
    got = given(*steps).when(restore()).then(e.RestartFailed)
    assert status_of(got.container()) == "exited"


def test_start_in_flight_fails_then_the_rules_apply() -> None:
    steps = (*running(host=policy("always")), stop(), exited(1, code=143), start(),
             mounted(2), booted())
    got = given(*steps).when(restore(g=2)).then(
        e.StartFailed(generation=2, step="sandbox", error="the host rebooted during the start",
                      exit_code=255), RESTART)
    assert got.events[-1].generation == 3


def test_first_start_in_flight_is_not_restarted() -> None:
    steps = (create(host=policy("always")), start(), mounted(1), booted())
    given(*steps).when(restore(g=1)).then(e.StartFailed)


def test_a_connected_start_in_flight_is_disconnected() -> None:
    steps = (create(), start(), mounted(1), ("a" * 64, c.ReportSandbox(generation=1)),
             joined(1), booted())
    given(*steps).when(restore(g=1)).then(e.NetworkDisconnected, e.StartFailed)


# --- repeats --------------------------------------------------------------------------------

def test_restore_after_the_boot_was_recorded_is_ignored() -> None:
    given(*running(host=policy("always")), booted(OLD), booted(NEW)).when(restore()).then(
        ignored("boot already restored"))


def test_restore_of_another_generation_is_ignored() -> None:
    given(*running(host=policy("always")), booted()).when(restore(g=7)).then(
        ignored("stale generation (current 1)"))


def test_restore_of_an_unknown_container_is_ignored() -> None:
    given(booted()).when(restore(cid=B)).then(ignored("no such container"))


# --- the worker's detection ------------------------------------------------------------------

class _Client:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, c.Command]] = []

    def send(self, cmd: c.Command, *, container_id: str = "", command_id: str | None = None,
             reply: bool = False, **_: Any) -> str:
        assert reply
        assert command_id is not None
        self.sent.append((container_id, command_id, cmd))
        return command_id

    def wait_result(self, command_id: str, timeout: float | None = None) -> None:
        assert command_id in [sent[1] for sent in self.sent]


class _Ctx:
    def __init__(self, root: Path) -> None:
        self.client = _Client()
        self.root = str(root)

    def container_dir(self, cid: str) -> str:
        return os.path.join(self.root, "containers", cid)


def _boot_file(tmp_path: Path, boot_id: str) -> str:
    path = tmp_path / "boot_id"
    path.write_text(boot_id + "\n")
    return str(path)


def _world(*steps: Step) -> World:
    return given(*steps).world


def test_worker_same_boot_appends_nothing(tmp_path: Path) -> None:
    ctx = _Ctx(tmp_path)
    world = _world(*running(), booted(OLD))
    assert not rec.restore_after_boot(ctx, world, _boot_file(tmp_path, OLD))  # type: ignore[arg-type]
    assert ctx.client.sent == []


def test_worker_unreadable_boot_id_appends_nothing(tmp_path: Path) -> None:
    ctx = _Ctx(tmp_path)
    assert not rec.restore_after_boot(ctx, _world(), str(tmp_path / "nope"))  # type: ignore[arg-type]
    assert ctx.client.sent == []


def test_worker_first_boot_only_records(tmp_path: Path) -> None:
    ctx = _Ctx(tmp_path)
    world = _world(*running())
    assert rec.restore_after_boot(ctx, world, _boot_file(tmp_path, NEW))  # type: ignore[arg-type]
    assert ctx.client.sent == [("", f"boot-{NEW}", c.ReportHostBooted(boot_id=NEW))]


def test_worker_reboot_restores_each_container_then_records(tmp_path: Path) -> None:
    ctx = _Ctx(tmp_path)
    world = _world(*running(), create("other", B), booted(OLD))
    assert rec.restore_after_boot(ctx, world, _boot_file(tmp_path, NEW))  # type: ignore[arg-type]
    sent = ctx.client.sent
    assert [s[:2] for s in sent] == [(A, c.restore_command_id(NEW, A)),
                                     (B, c.restore_command_id(NEW, B)),
                                     ("", f"boot-{NEW}")]
    lost = sent[0][2]
    assert isinstance(lost, c.RestoreContainer)
    assert (lost.generation, lost.exit_code, lost.pid) == (1, 255, 4242)
    assert sent[1][2] == c.RestoreContainer(boot_id=NEW, generation=0)


def test_worker_reports_the_saved_exit(tmp_path: Path) -> None:
    ctx = _Ctx(tmp_path)
    state = Path(ctx.container_dir(A)) / "state"
    state.mkdir(parents=True)
    (state / "exit.json").write_bytes(CODEC.json(ExitStatus(
        exit_code=7, pid=4242, finished_at_ns=555, generation=1)))
    world = _world(*running(), booted(OLD))
    rec.restore_after_boot(ctx, world, _boot_file(tmp_path, NEW))  # type: ignore[arg-type]
    assert ctx.client.sent[0][2] == c.RestoreContainer(boot_id=NEW, generation=1, exit_code=7,
                                                       finished_at=555, pid=4242)


def test_worker_skips_dead_containers(tmp_path: Path) -> None:
    ctx = _Ctx(tmp_path)
    world = _world(create(), rm(), booted(OLD))
    rec.restore_after_boot(ctx, world, _boot_file(tmp_path, NEW))  # type: ignore[arg-type]
    assert [s[1] for s in ctx.client.sent] == [f"boot-{NEW}"]


def test_worker_boot_id_file_from_the_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOR_BOOT_ID_FILE", _boot_file(tmp_path, "simulated"))
    assert rec.read_boot_id() == "simulated"
    monkeypatch.delenv("MOOR_BOOT_ID_FILE")
    assert rec.read_boot_id() == Path(rec.BOOT_ID_FILE).read_text().strip()
