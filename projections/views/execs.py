"""`GET /exec/{id}/json`: an exec instance as Docker's ExecInspect (pure)."""

from __future__ import annotations

import base64
from typing import Any

from commands.options import detach_key_bytes
from engine.core.state import World
from engine.errors import NotFound

__all__ = ["inspect_exec"]


def inspect_exec(world: World, exec_id: str) -> dict[str, Any]:
    """Return Docker's exec inspect document; 404 with Docker's text when unknown."""
    cid = world.execs.get(exec_id)
    ctr = world.containers.get(cid) if cid is not None else None
    if ctr is None or exec_id not in ctr.execs:
        raise NotFound(f"No such exec instance: {exec_id}")
    record = ctr.execs[exec_id]
    config = record.config
    process: dict[str, Any] = {"tty": config.tty, "entrypoint": config.cmd[0],
                               "arguments": list(config.cmd[1:]),
                               "privileged": config.privileged}
    if config.user:
        process["user"] = config.user
    return {
        "ID": exec_id, "Running": record.running, "ExitCode": record.exit_code,
        "ProcessConfig": process, "OpenStdin": config.attach_stdin,
        "OpenStderr": config.attach_stderr, "OpenStdout": config.attach_stdout,
        "CanRemove": False, "ContainerID": ctr.id,
        # Docker keeps the keys as bytes, so JSON shows them base64-encoded.
        "DetachKeys": base64.b64encode(detach_key_bytes(config.detach_keys)).decode()
        if config.detach_keys else "",
        "Pid": 0,
    }
