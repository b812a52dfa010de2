"""Set what `ps` shows for a process, keeping its environment readable.

setproctitle rewrites the process's argv memory. Left to itself it also takes over the
environment's memory (for room), which blanks /proc/PID/environ; SPT_NOENV, read at the
library's first call, keeps it intact: operators and the tests find an engine's
processes by the MOOR_PREFIX there. The title is then at most as long as the command
line the process was started with (longer titles are cut), and a forked child (a
supervisor forked by the worker) inherits that room.

The supervisor zygote (``workers.proc.zygote``) and its forks write the title themselves
(``write_title``, after ``use_own_writer``), the same bytes setproctitle writes with
SPT_NOENV: setproctitle's package imports logging, and so threading, whose at-fork hook
runs in every fork and copies ~0.4 MB of the zygote's pages into each supervisor.
"""

from __future__ import annotations

import os

__all__ = ["memory_bounds", "set_title", "supervisor_title", "use_own_writer", "write_title"]

_PR_SET_NAME_LIMIT = 15  # bytes of comm (the kernel's TASK_COMM_LEN - 1)
_own_writer = False


def use_own_writer() -> None:
    """Have set_title use ``write_title`` in this process and in its forks."""
    global _own_writer
    _own_writer = True


def write_title(title: str) -> bool:
    """Write title over this process's command line (NUL-padded) and comm; False if not.

    The command line's memory is the original argv: its length is the room, as with
    setproctitle's SPT_NOENV, and the environment after it stays as it was.
    """
    try:
        start, end = memory_bounds()[:2]
        data = title.encode(errors="replace")[:max(0, end - start - 1)]
        _pwrite("/proc/self/mem", data + b"\0" * (end - start - len(data)), start)
        _pwrite("/proc/self/comm", data[:_PR_SET_NAME_LIMIT], -1)
    except (OSError, ValueError, IndexError):
        return False  # a cosmetic loss only
    return True


# Plain descriptors, no file objects: in a zygote's fork every object first touched
# costs a copied page (CPython writes reference counts), and io's layers touch many.

_bounds: tuple[int, int, int, int] | None = None  # kept across fork: the same addresses


def memory_bounds() -> tuple[int, int, int, int]:
    """Return this process's arg_start, arg_end, env_start and env_end (proc(5) 48-51)."""
    global _bounds
    if _bounds is None:
        fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            stat = os.read(fd, 4096)
        finally:
            os.close(fd)
        fields = stat[stat.rfind(b")") + 2:].split()
        _bounds = int(fields[45]), int(fields[46]), int(fields[47]), int(fields[48])
    return _bounds


def _pwrite(path: str, data: bytes, offset: int) -> None:
    """Write data at offset (-1: a plain write, for files that cannot seek)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if offset < 0:
            os.write(fd, data)
        else:
            os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def supervisor_title(container_id: str) -> str:
    """Return a container's supervisor's title: `moor-supervisor <short id>`."""
    return f"moor-supervisor {container_id[:12]}"


def set_title(title: str) -> None:
    """Show this process as `title` in ps/top; do nothing if setproctitle is missing."""
    if _own_writer:
        write_title(title)
        return
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
