"""Placement at create: which host a new container lives on, as a pure function of the World.

- No host joined: "" (single-host mode, the default queue), whatever the labels say.
- `moorage.host=NAME` pins the container to that host.
- `moorage.constraint.<key>=<value>` keeps only hosts whose label `<key>` is `<value>`.
- Lost hosts, and hosts holding `capacity` containers already, are never chosen.
- Among the rest: the least loaded (containers placed / capacity), ties by host id.

A container counts against its host from create to removal, whatever its state: a created
or stopped container may start again, on that host alone. Nothing fits: Docker's 503 with
the swarm scheduler's words, "no suitable node (...)", saying why for each host.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from fractions import Fraction

from engine.core.state import Host, World
from engine.errors import Unavailable

__all__ = ["CONSTRAINT_PREFIX", "PIN_LABEL", "load", "place"]

PIN_LABEL = "moorage.host"
CONSTRAINT_PREFIX = "moorage.constraint."


def load(world: World) -> Counter[str]:
    """Return how many containers each host holds (only hosts' containers are counted)."""
    return Counter(ctr.host for ctr in world.containers.values() if ctr.host)


def _constraints(labels: Mapping[str, str]) -> dict[str, str]:
    return {key[len(CONSTRAINT_PREFIX):]: value for key, value in labels.items()
            if key.startswith(CONSTRAINT_PREFIX) and len(key) > len(CONSTRAINT_PREFIX)}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def place(world: World, labels: Mapping[str, str]) -> str:
    """Return the host a container with these labels is placed on ("" with no hosts)."""
    if not world.hosts:
        return ""
    pinned = labels.get(PIN_LABEL)
    if pinned is not None:
        if pinned not in world.hosts:
            raise Unavailable(f'no suitable node (host "{pinned}" has not joined)')
        candidates: list[Host] = [world.hosts[pinned]]
    else:
        candidates = sorted(world.hosts.values(), key=lambda h: h.id)
    wanted = _constraints(labels)
    counts = load(world)
    best: tuple[Fraction, str] | None = None
    lost = unmatched = full = 0
    for host in candidates:
        if not host.alive:
            lost += 1
        elif any(host.labels.get(k) != v for k, v in wanted.items()):
            unmatched += 1
        elif counts[host.id] >= host.capacity:
            full += 1
        else:
            key = (Fraction(counts[host.id], host.capacity), host.id)
            if best is None or key < best:
                best = key
    if best is not None:
        return best[1]
    if pinned is not None:
        why = ("is lost" if lost else "does not satisfy the constraints" if unmatched
               else "is full")
        raise Unavailable(f'no suitable node (host "{pinned}" {why})')
    reasons = [text for n, text in (
        (unmatched, f"scheduling constraints not satisfied on {_plural(unmatched, 'host')}"),
        (lost, f"{_plural(lost, 'host')} lost"),
        (full, f"{_plural(full, 'host')} at capacity")) if n]
    raise Unavailable(f"no suitable node ({'; '.join(reasons)})")
