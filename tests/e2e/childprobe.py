"""Run a probe in a forked child and hand its JSON report back to the test.

The child never returns into pytest: whatever the probe raises is reported as
{"error": repr, "errno": its errno or None} instead, and the child leaves with _exit(0).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def run_in_child(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; in the child run `probe`; return the dict it returned (or the error)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # never returns into pytest
        result: dict[str, Any] = {}
        try:
            os.close(read_fd)
            result = probe()
        except BaseException as e:  # noqa: B036 - report everything to the parent
            result = {"error": repr(e), "errno": getattr(e, "errno", None)}
        finally:
            os.write(write_fd, json.dumps(result).encode())
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return dict(json.loads(data))
