"""Start, find and stop the embedded redis-server in a run directory.

The server listens only on ``<data root>/redis/redis.sock`` (``port 0``: no TCP at all),
with ``appendonly yes`` and ``appendfsync always`` (``MOOR_REDIS_FSYNC``) so an
acknowledged command survives a crash of the server or of the host (README, Durability).
A recorded server is reused only if its pid is alive (not a zombie), is a
``redis-server``, runs in that directory (``/proc/<pid>/cwd``) and answers PING at the
socket with the same ``process_id``; otherwise the run files (never the data) are removed
and a new server starts.

Its users come from ``users.acl`` (``aclfile``): empty, Redis's default user alone (no
ACL), until `moor up` provisions one user per role (moor.embedded.acl) and turns the
default user off; from then on the launcher itself speaks as the admin user.
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.acl import ADMIN, Credential, credential_file, read_credential
from moor.embedded import rundir as rd
from moor.embedded.binary import binary_version, find_redis_server
from moor.embedded.errors import EmbeddedRedisError, ServerExited
from moor.embedded.rundir import EmbeddedRedis

__all__ = ["ACL_FILE", "NO_CLIENT_INFO", "admin_credential", "ensure_embedded", "socket_client",
           "stop_embedded"]

ACL_FILE = "users.acl"

START_TIMEOUT = 5.0  # seconds until a server we started (or found) must answer at all
LOAD_TIMEOUT = 300.0  # seconds we keep waiting while it answers LOADING (a long journal)
STOP_TIMEOUT = 10.0

# Skip CLIENT SETINFO and redis-py's ~3 ms package-metadata lookup per client. A redis-py
# that has driver_info (8.x here) deprecates lib_name; older ones (5.x) know only lib_name.
NO_CLIENT_INFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.Redis.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


def ensure_embedded(root: str | os.PathLike[str], timeout: float = START_TIMEOUT) -> EmbeddedRedis:
    """Return the embedded server under ``root``, starting one if none of ours is running."""
    rdir = rd.redis_dir(root)
    try:
        with rd.locked(rdir):
            found = _find_ours(rdir, timeout)
            if found is not None:
                _apply_fsync(rdir, timeout)  # a server started under another setting
                return found
            rd.remove_run_files(rdir)
            return _start(rdir, timeout)
    except OSError as exc:  # lock, config, record: permissions or a full disk
        raise EmbeddedRedisError(f"embedded Redis in {rdir}: {exc}") from exc


def stop_embedded(root: str | os.PathLike[str], timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the embedded server under ``root``; return False if none was running."""
    rdir = Path(os.path.abspath(root)) / "redis"
    if not rdir.is_dir():
        return False
    try:
        with rd.locked(rdir):
            return _stop(rdir, timeout)
    except OSError as exc:
        raise EmbeddedRedisError(f"embedded Redis in {rdir}: {exc}") from exc


def _stop(rdir: Path, timeout: float) -> bool:
    """Stop our server in ``rdir`` (the lock is held) and remove its run files."""
    pid = _our_pid(rdir)
    if pid is None:
        rd.remove_run_files(rdir)
        return False
    try:
        with socket_client(rdir, timeout=2.0) as client:
            client.shutdown()  # flushes the AOF; redis-py swallows the closed connection
    except redis.RedisError:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # verified above to be our redis-server
    deadline = time.monotonic() + timeout
    while rd.alive(pid):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(
                f"embedded redis-server pid {pid} in {rdir} did not exit within {timeout} s"
            )
        time.sleep(0.01)
    rd.remove_run_files(rdir)
    return True


# --- finding a server we started before -------------------------------------------------


def _find_ours(rdir: Path, timeout: float) -> EmbeddedRedis | None:
    """Return our running server in ``rdir`` once it answers, or None if there is none."""
    pid = _our_pid(rdir)
    if pid is None:
        return None
    try:
        _wait_ready(rdir, pid, timeout)
    except ServerExited:  # it was dying as we looked (crash, kill): start a new one
        return None
    record = rd.read_record(rdir)
    if record.get("pid") != pid:
        info = _socket_info(rdir) or {}
        record = rd.write_record(
            rdir, pid, str(info.get("executable", "")), str(info.get("redis_version", ""))
        )
    return rd.describe(rdir, record, started=False)


def _our_pid(rdir: Path) -> int | None:
    """Return the pid of our live server in ``rdir`` (recorded, or found at the socket)."""
    pid = next((p for p in rd.recorded_pids(rdir) if rd.is_ours(p, rdir)), None)
    if pid is None:
        info = _socket_info(rdir) or {}  # a live server of ours whose run files were deleted
        pid = info.get("process_id")
        if not isinstance(pid, int) or not rd.is_ours(pid, rdir):
            pid = None
    return pid


def _socket_info(rdir: Path) -> dict[str, Any] | None:
    """Return INFO server of whatever answers at the socket, or None."""
    if not (rdir / "redis.sock").exists():
        return None
    try:
        with socket_client(rdir, timeout=1.0) as client:
            return dict(client.info("server"))
    except redis.RedisError:
        return None


# --- starting a server -----------------------------------------------------------------


def _start(rdir: Path, timeout: float) -> EmbeddedRedis:
    """Start redis-server daemonized in ``rdir`` and wait until it answers PING."""
    binary = find_redis_server()
    version = binary_version(binary)
    major = int(version.split(".")[0]) if version[:1].isdigit() else 0
    if major and major < 7 and (rdir / "appendonlydir").is_dir():
        # Redis 7 stores its AOF in appendonlydir/, which 6.x ignores: it would start empty.
        raise EmbeddedRedisError(
            f"{rdir} holds data written by Redis 7+, but {binary} is Redis {version}; "
            "install redis-server 7+ (apt-get install redis-server) or set MOOR_REDIS_URL"
        )
    acl = rdir / ACL_FILE
    if not acl.exists():  # no ACL yet: Redis's default user alone (moor up provisions)
        os.close(os.open(acl, os.O_WRONLY | os.O_CREAT, 0o600))
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
            f"{binary} {conf} exited with {launched.returncode}: {output}{rd.log_tail(rdir)}"
        )
    deadline = time.monotonic() + timeout
    while True:
        pids = rd.recorded_pids(rdir)
        if pids and rd.alive(pids[0]):
            pid = pids[0]
            break
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"{binary} did not start in {rdir}{rd.log_tail(rdir)}")
        time.sleep(0.005)
    _wait_ready(rdir, pid, max(deadline - time.monotonic(), 0.5))
    return rd.describe(rdir, rd.write_record(rdir, pid, binary, version), started=True)


def _config(rdir: Path) -> str:
    """Return the server configuration: unix socket only, AOF, files in ``rdir``."""
    lines = [
        "daemonize yes",
        "supervised no",
        "port 0",
        f"unixsocket {_quote(rdir / 'redis.sock')}",
        "unixsocketperm 700",
        f"dir {_quote(rdir)}",
        f"pidfile {_quote(rdir / 'redis.pid')}",
        f"logfile {_quote(rdir / 'redis.log')}",
        f"aclfile {_quote(rdir / ACL_FILE)}",
        "appendonly yes",
        f"appendfsync {fsync_mode()}",
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
        if not rd.alive(pid):
            raise ServerExited(f"redis-server pid {pid} exited{rd.log_tail(rdir)}")
        try:
            with socket_client(rdir, timeout=1.0) as client:
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
                f"({last}); stop it or set MOOR_REDIS_URL{rd.log_tail(rdir)}"
            )
        time.sleep(0.005)


FSYNC_MODES = ("always", "everysec", "no")


def fsync_mode() -> str:
    """Return the AOF fsync policy of the embedded server: MOOR_REDIS_FSYNC, else always.

    always: Redis fsyncs before it replies, so nothing acknowledged is lost to any crash
    (measured cost: ~0.8 ms per command round trip; batches amortise it). everysec: a
    power loss may take the last second, and a slow disk can delay even the write(2).
    """
    mode = os.environ.get("MOOR_REDIS_FSYNC", "always").strip().lower() or "always"
    if mode not in FSYNC_MODES:
        raise EmbeddedRedisError(f"MOOR_REDIS_FSYNC must be one of {', '.join(FSYNC_MODES)}, "
                                 f"not {mode!r}")
    return mode


def _apply_fsync(rdir: Path, timeout: float) -> None:
    with socket_client(rdir, timeout) as client:
        client.config_set("appendfsync", fsync_mode())


def admin_credential(rdir: Path) -> Credential | None:
    """Return the admin user's credential under the data root, if moor up made one."""
    path = credential_file(str(rdir.parent), ADMIN)
    try:
        return read_credential(path) if path else None
    except (OSError, ValueError):
        return None


def socket_client(rdir: Path, timeout: float) -> redis.Redis:
    """Return a one-connection client on the socket (use it as a context manager): as the
    admin user once moor up provisioned the ACL users, else (no users loaded: the default
    user is on) as the default user."""
    admin = admin_credential(rdir)
    if admin is not None:
        client = _socket_client(rdir, timeout, username=admin.user, password=admin.password)
        try:
            client.ping()
            return client
        except redis.AuthenticationError:
            client.close()
    return _socket_client(rdir, timeout)


def _socket_client(rdir: Path, timeout: float, username: str | None = None,
                   password: str | None = None) -> redis.Redis:
    return redis.Redis(
        unix_socket_path=str(rdir / "redis.sock"),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # redis-py 6+ retries a failed connect 10 times with backoff (~4.6 s) by default;
        # a probe must fail fast so a stale socket is recognised at once.
        retry=Retry(NoBackoff(), 0),
        username=username,
        password=password,
        **NO_CLIENT_INFO,
    )
