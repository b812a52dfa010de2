"""Read models of the events stream: ps, inspect, the docker-events feed, watch, audit.

Pure folds (ps, inspect, feed, changes, audit) take the World or records and the clock as
arguments; `stream` and `journal` are the Redis and file adapters; `cli` wires them to `moor`.
"""

__all__ = [
    "audit",
    "changes",
    "cli",
    "feed",
    "filters",
    "inspect",
    "journal",
    "points",
    "ps",
    "shape",
    "stream",
]
