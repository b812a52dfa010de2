"""Which containers `container prune` removes: every one not running, under Docker's filters."""

from __future__ import annotations

from engine.core.state import Container, World
from engine.errors import InvalidParameter
from projections.views.filters import Filters, check_keys, match_kv
from projections.views.points import parse_time

__all__ = ["PRUNE_FILTERS", "prune_candidates"]

PRUNE_FILTERS = ("label", "label!", "until")


def prune_candidates(world: World, filters: Filters, now_ns: int) -> list[Container]:
    """Return the stopped containers that `filters` select (daemon/prune.go's rules)."""
    check_keys(filters, PRUNE_FILTERS)
    until: int | None = None
    if filters.get("until"):
        if len(filters["until"]) > 1:
            raise InvalidParameter("more than one until filter specified")
        until = parse_time(filters["until"][0], now_ns)
    chosen = []
    for ctr in sorted(world.containers.values(), key=lambda c: c.created):
        labels = ctr.config.labels
        if ctr.running or ctr.restarting or ctr.removal_in_progress:
            continue  # Docker's IsRunning() (paused and restarting count as running)
        if until is not None and ctr.created > until:
            continue
        if filters.get("label") and not match_kv(filters["label"], labels):
            continue
        if filters.get("label!") and match_kv(filters["label!"], labels):
            continue
        chosen.append(ctr)
    return chosen
