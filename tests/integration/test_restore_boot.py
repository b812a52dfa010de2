"""A host reboot through the reducer: the worker's boot step restores, the snapshot keeps it."""

from __future__ import annotations

from pathlib import Path

from commands.client import Client
from engine.core.evolve import fold
from engine.core.state import status_of
from engine.snapshot import load_world
from events import model as e
from events.specs import HostConfig, RestartPolicy
from tests.harness import ReducerThread, SagaDriver, busybox, drive, seed
from tests.harness import all_records as read_records
from workers.context import HostContext
from workers.reconcile import restore_after_boot


def test_reboot_restores_through_the_reducer(backend, tmp_path: Path) -> None:
    r, keys = backend
    client = Client(r, keys, timeout=5)
    boot = tmp_path / "boot_id"
    ctx = HostContext(redis=r, redis_url="redis://unused", keys=keys, root=str(tmp_path))
    with ReducerThread(r, keys) as reducer:
        seed(client)
        driver = SagaDriver(r, keys, client)
        always = client.create(busybox(), HostConfig(restart_policy=RestartPolicy(
            name="always")), name="always")
        plain = client.create(busybox(), name="plain")
        client.start("always", wait=False)
        client.start("plain", wait=False)
        drive(driver, lambda: reducer.world.containers[always].running
              and reducer.world.containers[plain].running)

        boot.write_text("first\n")  # the engine's first boot here: recorded only
        assert restore_after_boot(ctx, load_world(r, keys)[0], str(boot))
        assert load_world(r, keys)[0].host_boot_id == "first"
        assert not restore_after_boot(ctx, load_world(r, keys)[0], str(boot))
        assert status_of(reducer.world.containers[always]) == "running"

        boot.write_text("second\n")  # rebooted
        assert restore_after_boot(ctx, load_world(r, keys)[0], str(boot))
        snap, _ = load_world(r, keys)
        assert snap.host_boot_id == "second"
        assert snap.containers[always].saga and snap.containers[always].generation == 2
        assert status_of(snap.containers[plain]) == "exited"
        assert snap.containers[plain].exit_code == 255
        live = reducer.world
    records = [rec for _, rec in read_records(r, keys)]
    assert fold(records).snapshot() == live.snapshot() == snap.snapshot()
    assert [rec.event for rec in records if isinstance(rec.event, e.HostBooted)] == [
        e.HostBooted(boot_id="first"), e.HostBooted(boot_id="second", previous="first")]
