"""Regression tests for the reliability findings decided by the engine (issue 8).

Black-box through the client and a real reducer: commands in, facts out. Each test names
the finding it pins; each failed on the main before the fix.
"""

from __future__ import annotations

import time

import pytest

from commands import schema as c
from commands.client import Client
from engine.core.state import status_of
from events import model as e
from events.specs import ContainerConfig, HostConfig, ImageConfig, NetworkSpec, RestartPolicy
from tests.harness import IMAGE_ID, ReducerThread, SagaDriver, all_records, drive, seed

ALWAYS = HostConfig(restart_policy=RestartPolicy(name="always"))
SECOND = 1_000_000_000


def _running(driver: SagaDriver, reducer, cid: str) -> None:
    drive(driver, lambda: status_of(reducer.world.containers[cid]) == "running")


def _exit_later(client: Client, cid: str, generation: int, code: int, after_s: float) -> None:
    """Report an exit stamped `after_s` from now, so the back-off ends that much later."""
    client.report(cid, c.ReportProcessExited(generation=generation, exit_code=code,
                                             finished_at=time.time_ns() + int(after_s * SECOND)))


def _events_of(r, keys, cid: str, kind: type) -> list:
    return [rec.event for _, rec in all_records(r, keys)
            if rec.meta.container_id == cid and isinstance(rec.event, kind)]


def test_stop_and_kill_in_restart_back_off_return_at_once(backend):
    """Finding 7: the decision stops it (ContainerStopped, no ContainerDied): no wait."""
    r, keys = backend
    client = Client(r, keys, timeout=3)
    with ReducerThread(r, keys, block_ms=100) as reducer:
        seed(client)
        driver = SagaDriver(r, keys, client)
        for verb in ("stop", "kill"):
            cid = client.create(ContainerConfig(image="busybox", cmd=("true",)), ALWAYS,
                                name=f"backoff-{verb}")
            client.start(cid, wait=False)
            _running(driver, reducer, cid)
            _exit_later(client, cid, 1, 3, after_s=60)  # back-off lasts a minute
            drive(driver, lambda cid=cid: status_of(reducer.world.containers[cid])
                  == "restarting")
            t0 = time.monotonic()
            if verb == "stop":
                client.stop(cid, timeout=1)  # waits for the outcome
            else:
                client.wait_exit(client.submit(c.KillContainer(ref=cid, signal="SIGKILL")), 3)
            assert time.monotonic() - t0 < 2.5
            assert status_of(reducer.world.containers[cid]) == "exited"


def test_an_unparsable_image_stop_signal_falls_back_to_sigterm(backend):
    """Finding 8: Docker falls back to SIGTERM; stop and restart keep working."""
    r, keys = backend
    client = Client(r, keys, timeout=3)
    with ReducerThread(r, keys) as reducer:
        seed(client)
        client.register_image(image_id="sha256:" + "cd" * 32, repo_tags=("odd:latest",),
                              config=ImageConfig(cmd=("sh",), stop_signal="SIGNOPE"))
        driver = SagaDriver(r, keys, client)
        cid = client.create(ContainerConfig(image="odd"), name="odd-signal")
        client.start(cid, wait=False)
        _running(driver, reducer, cid)
        client.stop(cid, wait=False)
        client.restart(cid, wait=False)
        signals = _events_of(r, keys, cid, e.SignalRequested)
        assert [(s.purpose, s.signal) for s in signals] == [("stop", 15), ("restart", 15)]
        # a signal the user names is still checked
        with pytest.raises(Exception, match="Invalid signal: SIGALSONOPE|invalid signal"):
            client.stop(cid, signal="SIGALSONOPE", wait=False)


def test_a_policy_restart_without_a_free_address_stops_the_container(backend):
    """Finding 9: Docker's restart manager gives up: SetStopped, never stuck restarting."""
    r, keys = backend
    client = Client(r, keys, timeout=3)
    tiny = NetworkSpec(name="bridge", subnet="10.213.251.0/30", gateway="10.213.251.1",
                       bridge="moortiny0")  # one address: .2
    with ReducerThread(r, keys, block_ms=100) as reducer:
        client.define_network(tiny)
        client.register_image(image_id=IMAGE_ID, repo_tags=("busybox:latest",),
                              config=ImageConfig(cmd=("sh",)))
        driver = SagaDriver(r, keys, client)
        a = client.create(ContainerConfig(image="busybox"), ALWAYS, name="phoenix")
        client.start(a, wait=False)
        _running(driver, reducer, a)
        _exit_later(client, a, 1, 1, after_s=1.5)  # restart due in 1.6 s
        drive(driver, lambda: status_of(reducer.world.containers[a]) == "restarting")
        b = client.create(ContainerConfig(image="busybox"), name="squatter")
        client.start(b, wait=False)
        _running(driver, reducer, b)  # takes .2, the only address
        # Wait on the recorded fact, not on memory: the reducer folds a batch into memory
        # before its write lands, so "exited" can show a moment before the event does.
        drive(driver, lambda: _events_of(r, keys, a, e.RestartFailed), timeout=8)
        assert status_of(reducer.world.containers[a]) == "exited"


@pytest.mark.parametrize("policy,stop_signal,sent,restarts", [
    ("always", "SIGTERM", "SIGHUP", True),     # not the stop signal: the manager lives on
    ("always", "", "SIGHUP", False),           # no stop signal configured: any cancels
    ("always", "SIGTERM", "SIGTERM", False),   # the configured stop signal cancels
    ("always", "SIGTERM", "SIGKILL", False),   # SIGKILL always cancels
    ("on-failure", "SIGUSR1", "SIGHUP", True),
    ("unless-stopped", "SIGTERM", "SIGHUP", False),  # manually stopped, whatever the signal
])
def test_only_cancelling_signals_cancel_the_restart_policy(backend, policy, stop_signal,
                                                           sent, restarts):
    """Finding 10: Docker cancels only for SIGKILL, StopSignal, or any without one (§2)."""
    r, keys = backend
    client = Client(r, keys, timeout=3)
    with ReducerThread(r, keys) as reducer:
        seed(client)
        driver = SagaDriver(r, keys, client)
        cid = client.create(ContainerConfig(image="busybox", stop_signal=stop_signal),
                            HostConfig(restart_policy=RestartPolicy(name=policy)), name="sig")
        client.start(cid, wait=False)
        _running(driver, reducer, cid)
        client.kill(cid, signal=sent)
        client.report(cid, c.ReportProcessExited(generation=1, exit_code=129,
                                                 finished_at=time.time_ns()), wait=True)
        scheduled = _events_of(r, keys, cid, e.RestartScheduled)
        assert bool(scheduled) is restarts
