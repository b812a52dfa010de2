"""The figures of a chaos run, and the violations that explain them."""

from __future__ import annotations

import datetime
import os
from collections import Counter
from dataclasses import dataclass, field

from tests.chaos.faults import FaultPoint
from tests.chaos.journal import Violation

__all__ = ["Report"]

# The headline figures, each the number of violations of one invariant (target 0).
_HEADLINE = (("lost", "lost"), ("applied twice", "applied-twice"),
             ("duplicate effects", "duplicate-effect"), ("leaked resources", "leak"))


@dataclass
class Report:
    """What one profile run did and found."""

    profile: str
    seed: int
    started: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC))
    duration: float = 0.0
    rounds: int = 0
    points: list[FaultPoint] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    stuck: set[str] = field(default_factory=set)
    ops: Counter[str] = field(default_factory=Counter)
    op_errors: Counter[str] = field(default_factory=Counter)
    created: int = 0
    spawns: int = 0
    observer_overruns: int = 0
    neighbours: dict[int, str] = field(default_factory=dict)  # other engines' workers

    def by_invariant(self) -> Counter[str]:
        return Counter(v.invariant for v in self.violations)

    def figures(self) -> str:
        """The figures the README shows: faults, commands and the five targets of 0."""
        kinds = Counter(p.kind for p in self.points if p.confirmed)
        unconfirmed = [p for p in self.points if not p.confirmed]
        counts = self.by_invariant()
        uname = os.uname()
        lines = [
            f"moorage chaos run: profile {self.profile}, seed {self.seed}, "
            f"{self.rounds} round(s), {self.duration:.0f} s",
            f"date: {self.started:%Y-%m-%d %H:%M} UTC; machine: {' '.join(uname)}; "
            f"nproc {os.cpu_count()}",
            f"fault points injected: {sum(kinds.values())} ("
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")"
            + (f"; NOT CONFIRMED: {len(unconfirmed)}" if unconfirmed else ""),
            f"commands acknowledged: {self.counts['acknowledged']} (unacknowledged "
            f"{self.counts['unacknowledged']}, of which applied "
            f"{self.counts['unacknowledged, applied']})",
        ]
        lines += [f"{label}: {counts[inv]}" for label, inv in _HEADLINE]
        lines.append(f"stuck containers: {len(self.stuck)}")
        others = {k: n for k, n in counts.items()
                  if k not in {inv for _, inv in _HEADLINE}}
        lines.append("other violations: " + (", ".join(f"{k} {n}" for k, n in
                                                       sorted(others.items())) or "0"))
        lines.append(f"containers created: {self.created}; container processes the kernel "
                     f"exec'd: {self.spawns}; observer overruns: {self.observer_overruns}")
        lines.append("operations: " + ", ".join(f"{k} {n}" for k, n in sorted(self.ops.items())))
        if self.neighbours:
            lines.append(f"other moorage engines' workers on this host during the run: "
                         f"{len(self.neighbours)} ({sorted(set(self.neighbours.values()))}); "
                         "each touches only resources carrying its own engine id")
        return "\n".join(lines)

    def render(self, limit: int = 60) -> str:
        """Figures, fault points and every violation (the first `limit` in full)."""
        parts = [self.figures(), "", "fault points:"]
        parts += [f"  {p.render()}" for p in self.points]
        if self.op_errors:
            parts.append("operation errors (answers the workload got): " + ", ".join(
                f"{k} {n}" for k, n in sorted(self.op_errors.items())))
        if self.violations:
            parts += ["", f"violations ({len(self.violations)}):"]
            parts += [v.render() for v in self.violations[:limit]]
            if len(self.violations) > limit:
                rest = Counter(v.invariant for v in self.violations[limit:])
                parts.append(f"... and {len(self.violations) - limit} more: {dict(rest)}")
        return "\n".join(parts)
