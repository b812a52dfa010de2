"""`POST /containers/{id}/update`: Docker's `update` body as an `UpdateContainer` command.

moby's ContainerUpdate: only the updatable Resources and the RestartPolicy are read; a
zero field keeps its value, `PidsLimit` null keeps it. The answer is `{"Warnings": []}`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from commands import schema as c
from engine.errors import InvalidParameter
from events.specs import HostConfig, RestartPolicy
from moor.api.context import ctx, run
from moor.api.create import resources
from moor.api.http import json_body, json_response

__all__ = ["update", "update_command"]

_UPDATABLE = ("memory", "nano_cpus", "memory_swap", "memory_reservation", "cpu_shares",
              "cpu_period", "cpu_quota", "cpuset_cpus", "cpuset_mems", "blkio_weight")


def update_command(ref: str, body: Any) -> c.UpdateContainer:
    """Return the command for an update body, or raise Docker's 400 for a malformed one."""
    if not isinstance(body, dict):
        raise InvalidParameter("invalid JSON: the update body must be an object")
    fields = resources(body)
    pids = body.get("PidsLimit")
    if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int)):
        raise InvalidParameter("invalid JSON: PidsLimit must be an integer")
    policy = body.get("RestartPolicy") or {}
    if not isinstance(policy, dict):
        raise InvalidParameter("invalid JSON: RestartPolicy must be an object")
    name = policy.get("Name") or ""
    count = policy.get("MaximumRetryCount") or 0
    if not isinstance(name, str) or isinstance(count, bool) or not isinstance(count, int):
        raise InvalidParameter("invalid JSON: RestartPolicy has the wrong type")
    return c.UpdateContainer(
        ref=ref, resources=HostConfig(**{k: fields[k] for k in _UPDATABLE}), pids_limit=pids,
        restart_policy=RestartPolicy(name=name, maximum_retry_count=count) if name else None)


async def update(request: web.Request) -> web.Response:
    cmd = update_command(request.match_info["id"], await json_body(request))
    await run(ctx(request).client(request).submit, cmd)
    return json_response({"Warnings": []})
