"""The snapshot's world parts follow every engine-wide fact, even one alone in its batch.

A batch rewrites the world parts only when it folded an engine-wide fact; a fact missing
from that set (a volume made on its own) would leave the snapshot behind the journal, and
every reader of the snapshot (the API, the workers) would not see it.
"""

from __future__ import annotations

from commands.client import Client
from engine.core.evolve import WORLD_EVENTS
from engine.snapshot import load_world
from events import model as e
from tests.harness import ReducerThread, seed


def test_a_lone_volume_fact_reaches_the_snapshot(backend):
    r, keys = backend
    client = Client(r, keys, timeout=3)
    with ReducerThread(r, keys, block_ms=50):
        seed(client)
        client.create_volume("lonely")
        assert "lonely" in load_world(r, keys)[0].volumes
        client.remove_volume("lonely")
        assert "lonely" not in load_world(r, keys)[0].volumes


def test_every_world_fact_rewrites_the_world_parts():
    # The facts evolve folds into the world itself are exactly those that rewrite it.
    assert {e.VolumeCreated, e.VolumeRemoved, e.ImageTagged, e.ImageRegistered,
            e.ImageRemoved, e.NetworkDefined, e.HostBooted} <= WORLD_EVENTS
