"""The host worker's context: Redis, the shard's keys, the data root and the report path.

`moor worker` configures it once; rq job functions read it (jobs carry only primitives).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import msgspec

from commands import schema as c
from commands.client import Client
from engine.acl import WORKER, credential_file
from engine.core.state import Container
from engine.keys import Keys
from events.runs import ExitStatus
from workers.proc.spec import ExitReport

__all__ = ["HostContext", "configure", "current"]

_CONTAINER = msgspec.msgpack.Decoder(Container)


@dataclass
class HostContext:
    """Everything a job needs besides its arguments."""

    redis: Any
    redis_url: str
    keys: Keys
    root: str
    host: str = socket.gethostname()
    host_id: str = ""  # the host it joined as (workers.hostjoin); "": single-host mode
    queue_redis: Any = None  # where the rq queues live, if not on `redis` (a cluster)

    @property
    def client(self) -> Client:
        return Client(self.redis, self.keys, actor=f"worker@{self.host}")

    def report(self, container_id: str, report: c.Command, command_id: str) -> None:
        """Append a report with a deterministic id, so a retried job's repeat is dropped."""
        self.client.send(report, container_id=container_id, command_id=command_id)

    def container(self, container_id: str) -> Container | None:
        """Read the container's snapshot as the reducer last wrote it."""
        raw = self.redis.hget(self.keys.containers, container_id)
        return _CONTAINER.decode(raw) if raw is not None else None

    def volume_exists(self, name: str) -> bool:
        """Tell whether the snapshot holds the volume (a removal job must not delete the
        directory of a volume created again under the same name since)."""
        from engine.snapshot import WorldParts

        raw = self.redis.hget(self.keys.world, "parts")
        return raw is not None and name in msgspec.msgpack.decode(raw, type=WorldParts).volumes

    def container_dir(self, container_id: str) -> str:
        return os.path.join(self.root, "containers", container_id)

    def exit_report(self, container_id: str, generation: int) -> ExitReport:
        """Return where and as whom a supervisor reports this generation's exit."""
        return ExitReport(redis_url=self.redis_url, stream=self.keys.reports,
                          container_id=container_id, generation=generation,
                          actor=f"supervisor@{self.host}",
                          credential_file=credential_file(self.root, WORKER))

    def report_exit(self, container_id: str, generation: int, status: ExitStatus) -> None:
        """Report a run's exit under its process's id (a repeat of the supervisor's drops)."""
        self.report(container_id, c.ReportProcessExited.of(generation, status),
                    c.exit_command_id(container_id, generation, status.pid))


_CURRENT: HostContext | None = None


def configure(context: HostContext) -> None:
    """Set the context jobs run with (once per worker process, or per test)."""
    global _CURRENT
    _CURRENT = context


def current() -> HostContext:
    if _CURRENT is None:
        raise RuntimeError("the host worker context is not configured (run `moor worker`)")
    return _CURRENT


