"""Ask the engine's embedded resolver (`dnsd`) to serve or drop a sandbox; start it if needed.

The resolver outlives the worker that started it (as a supervisor does): a session of
its own, its own log under the data root. Its environment carries the engine id, not
the key prefix, so the engine's process accounting does not count it as a container's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from engine.config import engine_id
from engine.errors import Internal
from workers.net.dnsd import control_path, upstreams_file

__all__ = ["drop", "serve"]

_START_TIMEOUT = 10.0


def _request(root: str, req: dict[str, object], timeout: float = 10.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control_path(root))
        s.sendall(json.dumps(req).encode() + b"\n")
        return s.makefile().readline().strip()


def _spawn(root: str, redis_url: str, prefix: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MOOR_PREFIX"}
    env["MOOR_ENGINE_ID"] = engine_id(root, prefix)
    os.makedirs(os.path.join(root, "dns"), exist_ok=True)
    with open(os.path.join(root, "dns", "resolver.log"), "ab") as log:
        subprocess.Popen([sys.executable, "-m", "workers.net.dnsd", "--root", root,
                          "--redis-url", redis_url, "--prefix", prefix],
                         env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__)))))


def serve(root: str, redis_url: str, prefix: str, cid: str, netns: str,
          upstreams: list[str]) -> None:
    """Make 127.0.0.11 answer inside the sandbox before the container's process starts."""
    path = upstreams_file(root, cid)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:  # the resolver reads it back after a restart
        f.write(" ".join(upstreams))
    req = {"op": "serve", "cid": cid, "netns": netns, "upstreams": upstreams}
    deadline = time.monotonic() + _START_TIMEOUT
    spawned = False
    while True:
        try:
            answer = _request(root, req)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if not spawned:
                _spawn(root, redis_url, prefix)
                spawned = True
            if time.monotonic() > deadline:
                raise Internal("the embedded DNS resolver did not start "
                               f"(see {os.path.join(root, 'dns', 'resolver.log')})") from None
            time.sleep(0.02)
    if answer != "ok":
        raise Internal(f"embedded DNS for container {cid}: {answer}")


def drop(root: str, cid: str) -> None:
    """Close the sandbox's listeners (no resolver running is success)."""
    if not os.path.exists(control_path(root)):
        return
    try:
        _request(root, {"op": "drop", "cid": cid}, timeout=5)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
