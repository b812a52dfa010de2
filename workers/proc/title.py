"""Set what `ps` shows for a process, keeping its environment readable.

setproctitle rewrites the process's argv memory. Left to itself it also takes over the
environment's memory (for room), which blanks /proc/PID/environ; SPT_NOENV, read at the
library's first call, keeps it intact: operators and the tests find an engine's
processes by the MOOR_PREFIX there. The title is then at most as long as the command
line the process was started with (longer titles are cut), and a forked child (a
supervisor forked by the worker) inherits that room.
"""

from __future__ import annotations

import os

__all__ = ["set_title", "supervisor_title"]


def supervisor_title(container_id: str) -> str:
    """Return a container's supervisor's title: `moor-supervisor <short id>`."""
    return f"moor-supervisor {container_id[:12]}"


def set_title(title: str) -> None:
    """Show this process as `title` in ps/top; do nothing if setproctitle is missing."""
    try:
        import setproctitle
    except ImportError:  # a cosmetic loss only: the process works the same
        return
    ours = "SPT_NOENV" not in os.environ
    if ours:
        os.environ["SPT_NOENV"] = "1"
    try:
        setproctitle.setproctitle(title)
    finally:
        if ours:  # read once, at the first call: children need not inherit it
            os.environ.pop("SPT_NOENV", None)
