"""rq entry points: thin, primitive arguments only (the engine names them by string)."""

from __future__ import annotations

from typing import Any

from workers import saga
from workers.context import current

__all__ = ["remove_container", "signal_container", "start_container", "teardown_container"]


def start_container(plan: dict[str, Any]) -> None:
    saga.start(current(), plan)


def signal_container(container_id: str, generation: int, signal: int, timeout: int | None,
                     purpose: str) -> None:
    saga.signal(current(), container_id, generation, signal, timeout, purpose)


def teardown_container(container_id: str, generation: int) -> None:
    saga.teardown(current(), container_id, generation)


def remove_container(container_id: str, generation: int) -> None:
    saga.remove(current(), container_id, generation)
