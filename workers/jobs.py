"""rq entry points: thin, primitive arguments only (the engine names them by string).

The start plan arrives as the primitives rq's JSON gives back and is typed here, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from commands.codec import CODEC
from workers import interactive, saga, update
from workers.context import current
from workers.proc import process
from workers.storage import volumes

__all__ = ["create_volume", "freeze_container", "remove_container", "remove_volume",
           "signal_container", "start_container", "start_exec", "teardown_container",
           "update_container"]

log = logging.getLogger("moorage.worker")


@contextmanager
def _timed(what: str, cid: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        # Supervisors are our children (subreaper): reap the ones that ended.
        process.reap_children()
        log.info("%s %s %.1f ms", what, cid[:12], (time.perf_counter() - t0) * 1000)


def start_container(plan: dict[str, Any]) -> None:
    start = CODEC.plan(plan)
    with _timed("start", start.container_id):
        saga.start(current(), start)


def signal_container(container_id: str, generation: int, signal: int, timeout: int | None,
                     purpose: str) -> None:
    with _timed(f"signal {signal}", container_id):
        saga.signal(current(), container_id, generation, signal, timeout, purpose)


def teardown_container(container_id: str, generation: int, ports: bool = True) -> None:
    with _timed("teardown", container_id):
        saga.teardown(current(), container_id, generation, ports)


def remove_container(container_id: str, generation: int, ports: bool = True) -> None:
    with _timed("remove", container_id):
        saga.remove(current(), container_id, generation, ports)


def freeze_container(container_id: str, generation: int, frozen: bool, version: int) -> None:
    with _timed("pause" if frozen else "unpause", container_id):
        interactive.freeze(current(), container_id, generation, frozen, version)


def start_exec(container_id: str, exec_id: str, detach: bool = False) -> None:
    with _timed(f"exec {exec_id[:12]}", container_id):
        interactive.start_exec(current(), container_id, exec_id, detach)


def update_container(container_id: str, generation: int, version: int = 0) -> None:
    with _timed("update", container_id):
        update.update_limits(current(), container_id, generation, version)


def create_volume(name: str) -> None:
    volumes.ensure_volume(current().root, name)


def remove_volume(name: str) -> None:
    ctx = current()
    if ctx.volume_exists(name):
        log.info("volume %s exists again; its directory stays", name[:12])
        return
    volumes.release_volume(ctx.root, name)
