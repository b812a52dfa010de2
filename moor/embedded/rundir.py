"""The embedded server's run directory: its lock, its record, and whether a pid is ours.

Files in ``<data root>/redis/`` (mode 0700) besides the data:

- ``redis.conf``   the configuration we wrote and started the server with;
- ``redis.pid``    the server's own pidfile;
- ``server.json``  what we recorded after it answered: pid, socket, binary, version;
- ``redis.log``    the server's log;
- ``lock``         ``flock``-ed while a process checks, starts or stops the server.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from moor.embedded.errors import EmbeddedRedisError

__all__ = [
    "EmbeddedRedis",
    "alive",
    "describe",
    "is_ours",
    "locked",
    "log_tail",
    "read_record",
    "recorded_pids",
    "redis_dir",
    "remove_run_files",
    "write_record",
]

LOCK_TIMEOUT = 60.0  # seconds to wait for another moor process that holds the lock
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the trailing NUL
_RUN_FILES = ("server.json", "redis.pid", "redis.sock")


@dataclass(frozen=True)
class EmbeddedRedis:
    """A running embedded redis-server: where it listens and which process it is."""

    dir: str
    socket_path: str
    pid: int
    binary: str
    version: str
    started: bool  # True if this call started it, False if it reused a running one

    @property
    def url(self) -> str:
        """Return the redis-py URL of the server (``unix://<dir>/redis.sock``)."""
        return f"unix://{self.socket_path}"


def redis_dir(root: str | os.PathLike[str]) -> Path:
    """Create ``<root>/redis`` with mode 0700 and return it (absolute)."""
    rdir = Path(os.path.abspath(root)) / "redis"
    if len(os.fsencode(rdir / "redis.sock")) > _SUN_PATH_MAX:
        raise EmbeddedRedisError(
            f"socket path {rdir / 'redis.sock'} is longer than {_SUN_PATH_MAX} bytes; "
            "choose a shorter MOOR_DATA_ROOT"
        )
    try:
        rdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if rdir.stat().st_uid == os.geteuid():
            rdir.chmod(0o700)
    except OSError as exc:
        raise EmbeddedRedisError(f"cannot create {rdir}: {exc}") from exc
    return rdir


@contextmanager
def locked(rdir: Path) -> Iterator[None]:
    """Hold ``<rdir>/lock`` so that concurrent moor processes start at most one server."""
    fd = os.open(rdir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedRedisError(
                        f"another process has held {rdir / 'lock'} for {LOCK_TIMEOUT} s"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def read_record(rdir: Path) -> dict[str, object]:
    """Return ``server.json`` as a dict, or an empty one if missing or unreadable."""
    try:
        data = json.loads((rdir / "server.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(rdir: Path, pid: int, binary: str, version: str) -> dict[str, object]:
    """Write ``server.json`` atomically and return what was written."""
    record: dict[str, object] = {
        "pid": pid, "unixsocket": str(rdir / "redis.sock"), "port": 0,
        "binary": binary, "version": version,
    }
    tmp = rdir / "server.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, rdir / "server.json")
    return record


def describe(rdir: Path, record: dict[str, object], started: bool) -> EmbeddedRedis:
    """Build the public description from a record."""
    return EmbeddedRedis(
        dir=str(rdir), socket_path=str(rdir / "redis.sock"), pid=int(str(record["pid"])),
        binary=str(record.get("binary", "")), version=str(record.get("version", "")),
        started=started,
    )


def remove_run_files(rdir: Path) -> None:
    """Remove pidfile, socket and record of a server that no longer runs; keep the data."""
    for name in _RUN_FILES:
        (rdir / name).unlink(missing_ok=True)


def recorded_pids(rdir: Path) -> list[int]:
    """Return the pids named by ``server.json`` and ``redis.pid``, in that order."""
    pids: list[int] = []
    pid = read_record(rdir).get("pid")
    if isinstance(pid, int) and pid > 0:
        pids.append(pid)
    try:
        text = (rdir / "redis.pid").read_text().strip()
    except OSError:
        text = ""
    if text.isdigit() and int(text) > 0 and int(text) not in pids:
        pids.append(int(text))
    return pids


def is_ours(pid: int, rdir: Path) -> bool:
    """Tell whether ``pid`` is a live redis-server whose working directory is ``rdir``."""
    if not alive(pid):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # gone meanwhile, or another user's process
        return False
    return comm == "redis-server" and cwd == os.path.realpath(rdir)


def alive(pid: int) -> bool:
    """Tell whether ``pid`` exists and is not a zombie (PID 1 here reaps slowly)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def log_tail(rdir: Path, lines: int = 15) -> str:
    """Return the end of the server log, formatted to append to an error message."""
    try:
        tail = (rdir / "redis.log").read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n--- " + str(rdir / "redis.log") + " ---\n" + "\n".join(tail) if tail else ""
