"""The control-plane client: submit commands, wait for results and lifecycle outcomes.

    client = Client(redis.Redis.from_url(url), keys_for())
    cid = client.create(ContainerConfig(image="busybox", cmd=("sleep", "60")), name="web")
    client.start("web")          # waits until running (or raises the start error)
    client.remove("web", force=True)

Errors are engine.errors classes carrying Docker's status and text.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from commands import schema as c
from commands.codec import CODEC, CommandResult
from engine.errors import (
    InvalidParameter,
    MoorError,
    NotModified,
    Timeout,
    Unavailable,
    error_for_status,
)
from engine.keys import Inbox, Keys
from engine.resp import redis_errors
from events import model as e
from events.netspecs import Networking
from events.specs import ANONYMOUS_LABEL, ContainerConfig, ExecConfig, HostConfig

__all__ = ["Client", "Submitted", "new_container_id"]


def new_container_id() -> str:
    """Return 64 random hex chars whose short form is not all digits (as Docker does)."""
    while True:
        cid = secrets.token_hex(32)
        if not cid[:12].isdigit():
            return cid


class Submitted:
    """A command's result plus the events-stream id of its last event (a watch cursor)."""

    def __init__(self, result: CommandResult, last_event_id: str) -> None:
        self.result = result
        self.last_event_id = last_event_id


class Client:
    """Submit commands to one shard and wait for what the reducer decided.

    Commands go to `inbox` (default: the default control principal's commands stream;
    `keys.inbox("alice")` for principal alice, whose Redis user alone may append there);
    reports go to the reports stream. The reducer records the principal from the stream,
    and `actor` as who the caller says it acts for.
    """

    def __init__(self, redis: Any, keys: Keys, *, actor: str = "moor", reason: str = "",
                 timeout: float = 30.0, inbox: Inbox | None = None, replicas: int = 0,
                 replica_wait_ms: int = 2000, retry_for: float = 0.0) -> None:
        self.redis = redis
        self.keys = keys
        self.actor = actor
        self.reason = reason
        self.timeout = timeout
        self.inbox = inbox or keys.inbox()
        # Durability on Redis Cluster (replication is asynchronous): a result counts as
        # acknowledged only once `replicas` replicas hold it (WAIT); 0: as soon as read.
        self.replicas = replicas
        self.replica_wait_ms = replica_wait_ms
        # Seconds a command that got no answer (Redis unreachable, failing over, not yet
        # replicated) is sent again under the same id; the dedupe marks answer a repeat
        # with the first result, so a retried command is never applied twice.
        self.retry_for = retry_for
        self.retries = 0

    def store(self, ref: str = "") -> tuple[Any, Keys]:
        """Return (redis, keys) of the shard holding the container `ref` names (one shard
        here; commands.client.router.ShardedClient routes)."""
        return self.redis, self.keys

    # --- the primitive ------------------------------------------------------------

    def send(self, cmd: c.Command, *, container_id: str = "", command_id: str | None = None,
             reason: str | None = None, causation_id: str = "", reply: bool = False) -> str:
        """Append a command to the commands stream; return its id.

        With `reply`, the reducer also pushes the result to the command's reply list,
        which `wait_result` blocks on.
        """
        env = c.Envelope(command_id=command_id or uuid.uuid4().hex, container_id=container_id,
                         issued_at=time.time_ns(), actor=self.actor,
                         reason=self.reason if reason is None else reason,
                         causation_id=causation_id, reply=reply)
        stream = self.keys.reports if type(cmd) in _REPORTS else self.inbox.key
        fields = {"env": CODEC.encode(env), "cmd": CODEC.encode(cmd)}
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                self.redis.xadd(stream, fields)
                return env.command_id
            except redis_errors() as exc:  # unreachable, or refusing writes (READONLY)
                if time.monotonic() >= deadline:
                    raise Unavailable(f"cannot reach the engine's Redis: {exc}") from exc
                self.retries += 1
                time.sleep(0.1)

    def submit(self, cmd: c.Command, *, container_id: str = "", command_id: str | None = None,
               reason: str | None = None, timeout: float | None = None,
               check: bool = True) -> Submitted:
        """Append a command and block until the reducer's result arrives.

        With `check`, a rejection raises its typed error (NotModified included).
        """
        command_id = command_id or uuid.uuid4().hex
        mark = command_id if type(cmd) in _REPORTS else self.inbox.mark(command_id)
        deadline = time.monotonic() + self.retry_for
        while True:
            try:
                self.send(cmd, container_id=container_id, command_id=command_id,
                          reason=reason, reply=True)
                submitted = self.wait_result(command_id, timeout, mark=mark)
                break
            except Unavailable:  # Timeout too: no answer is not a refusal
                if time.monotonic() >= deadline:
                    raise
                self.retries += 1
                time.sleep(0.1)
        if check and not submitted.result.ok:
            raise error_for_status(submitted.result.status, submitted.result.message)
        return submitted

    def wait_result(self, command_id: str, timeout: float | None = None,
                    mark: str | None = None) -> Submitted:
        """Block on the command's reply list (no polling); fall back to the stored result
        (under `mark`, its dedupe mark: by default that of a command on this inbox)."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        key = self.keys.reply(command_id)
        value = None
        try:
            while value is None:
                left = deadline - time.monotonic()
                # Short blocks: redis-py's default socket timeout (5 s) must not fire first.
                block = min(max(left, 0.001), 2.0)
                if self.replicas:
                    value = self._durable_pop(key, block)
                else:
                    reply = self.redis.blpop([key], timeout=block)
                    value = reply[1] if reply else None
                if value is None and left <= 2.0:
                    value = self._stored(mark or self.inbox.mark(command_id))
                    break
        except redis_errors() as exc:
            raise Unavailable(f"cannot reach the engine's Redis: {exc}") from exc
        if value is None:
            raise Timeout(f"no result for command {command_id} within {wait:g}s "
                          "(is `moor reducer` running?)")
        last, _, blob = value.partition(b" ")
        return Submitted(CODEC.result(blob), last.decode())

    def _durable_pop(self, key: str, block: float) -> bytes | None:
        """BLPOP the reply, then WAIT on the same connection for `replicas` replicas.

        Popping the reply is a write, made after the reducer's write of the result (Redis
        runs one command at a time), so WAIT returning enough replicas means the result,
        the facts and the command's acknowledgement are on them: a failover keeps them.
        """
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.blpop([key], timeout=block)
            pipe.execute_command("WAIT", self.replicas, self.replica_wait_ms)
            reply, acked = pipe.execute()
        if not reply:
            return None
        self._check_replicated(acked)
        return reply[1]

    def _stored(self, mark: str) -> bytes | None:
        """Read a stored result (the reply list expired or was missed); with `replicas`,
        write a marker and WAIT so what was read is known to be replicated."""
        if not self.replicas:
            return self.redis.hget(self.keys.done, mark)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.done, mark)
            pipe.set(self.keys.sync(), mark, px=1000)
            pipe.execute_command("WAIT", self.replicas, self.replica_wait_ms)
            value, _, acked = pipe.execute()
        if value is not None:
            self._check_replicated(acked)
        return value

    def _check_replicated(self, acked: int) -> None:
        if int(acked) < self.replicas:
            raise Unavailable(
                f"the result is on the primary but only {acked} of {self.replicas} replicas "
                f"acknowledged it within {self.replica_wait_ms} ms: not durable yet, retry "
                "with the same command id")

    # --- waiting for lifecycle outcomes -------------------------------------------

    def wait_event(self, container_id: str, after: str, match: Callable[[e.Event], bool],
                   timeout: float | None = None) -> tuple[str, e.EventRecord]:
        """Block on the events stream after `after` until a matching event of the container."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        cursor = after or "0-0"
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"timed out waiting on container {container_id[:12]} "
                              "(is `moor worker` running?)")
            # Short blocks: a long one may outlast the connection's socket timeout.
            try:
                reply = self.redis.xread({self.keys.events: cursor}, count=500,
                                         block=max(1, min(int(left * 1000), 2000)))
            except redis_errors() as exc:
                raise Unavailable(f"cannot reach the engine's Redis: {exc}") from exc
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    cursor = entry_id
                    record = CODEC.record(fields[b"d"])
                    if record.meta.container_id == container_id and match(record.event):
                        return entry_id.decode(), record

    # --- control plane ------------------------------------------------------------

    def define_network(self, spec: Any) -> CommandResult:
        try:
            return self.submit(c.DefineNetwork(network=spec)).result
        except NotModified as exc:
            return CommandResult(command_id="", ok=True, status=304, message=exc.message)

    def register_image(self, **fields: Any) -> CommandResult:
        return self.submit(c.RegisterImage(**fields)).result

    def commit_container(self, ref: str, **fields: Any) -> CommandResult:
        """Record a commit's image (built on this host) and the container's `commit`."""
        return self.submit(c.CommitContainer(ref=ref, **fields)).result

    def note_action(self, ref: str, action: str, **attributes: str) -> str:
        """Record an access (top, archive-path, ...) as Docker's container event."""
        return self.submit(c.NoteContainerAction(ref=ref, action=action,
                                                 attributes=attributes)).result.container_id

    def create_volume(self, name: str = "", driver: str = "", labels: dict[str, str] | None = None,
                      options: dict[str, str] | None = None) -> str:
        """Create a volume (no name: an anonymous one, named here as Docker does, with
        its label); return its name."""
        labels = dict(labels or {})
        if not name:
            name = secrets.token_hex(32)
            labels[ANONYMOUS_LABEL] = ""
        try:
            self.submit(c.CreateVolume(name=name, driver=driver, labels=labels,
                                       options=options or {}))
        except NotModified:
            pass  # it exists: Docker answers with it
        return name

    def remove_volume(self, name: str, force: bool = False) -> None:
        try:
            self.submit(c.RemoveVolume(name=name, force=force))
        except NotModified:
            pass  # forced and already gone: no error, as Docker

    def remove_image(self, ref: str, force: bool = False) -> CommandResult:
        return self.submit(c.RemoveImage(ref=ref, force=force)).result

    def create(self, config: ContainerConfig, host_config: HostConfig | None = None,
               name: str = "", container_id: str | None = None,
               networking: Networking | None = None) -> str:
        """Create a container (with its networks' settings, DNS and links); return its id."""
        cid = container_id or new_container_id()
        self.submit(c.CreateContainer(name=name, config=config,
                                      host_config=host_config or HostConfig(),
                                      networking=networking),
                    container_id=cid)
        return cid

    def start(self, ref: str, wait: bool = True, timeout: float | None = None) -> str:
        """Start; with `wait`, block until running and raise the start error if it failed."""
        sub = self.submit(c.StartContainer(ref=ref))
        if wait:
            self._await_start(sub, e.ContainerStarted, timeout)
        return sub.result.container_id

    def _await_start(self, sub: Submitted, done: type, timeout: float | None) -> None:
        """Block until `done` (or StartFailed, raised as Docker's start error)."""
        _, record = self.wait_event(sub.result.container_id, sub.last_event_id,
                                    lambda ev: isinstance(ev, done | e.StartFailed), timeout)
        if isinstance(record.event, e.StartFailed):
            raise _start_error(record.event)

    def _stop_grace(self, timeout: int | None) -> float:
        """How long a stop may take: its timeout (Docker's default 10 s) plus ours."""
        return (timeout if timeout is not None and timeout >= 0 else 10) + self.timeout

    def stop(self, ref: str, timeout: int | None = None, signal: str = "",
             wait: bool = True) -> str:
        """Stop (signal, then SIGKILL after the timeout); with `wait`, until it died."""
        try:
            sub = self.submit(c.StopContainer(ref=ref, timeout=timeout, signal=signal))
        except NotModified:
            return ref  # Docker's CLI treats 304 as success
        if wait:
            self.wait_exit(sub, self._stop_grace(timeout))
        return sub.result.container_id

    def wait_exit(self, sub: Submitted, timeout: float | None = None) -> None:
        """Block until a stop or kill `sub` took effect: the process died (or never started).

        A container waiting out a restart back-off has no process: the decision itself
        stops it (ContainerStopped, no ContainerDied), so there is nothing to wait for.
        """
        if _STOPPED_AT_ONCE & set(sub.result.events):
            return
        self.wait_event(sub.result.container_id, sub.last_event_id,
                        lambda ev: isinstance(ev, e.ContainerDied | e.StartFailed), timeout)

    def kill(self, ref: str, signal: str = "SIGKILL") -> str:
        return self.submit(c.KillContainer(ref=ref, signal=signal)).result.container_id

    def restart(self, ref: str, timeout: int | None = None, signal: str = "",
                wait: bool = True) -> str:
        sub = self.submit(c.RestartContainer(ref=ref, timeout=timeout, signal=signal))
        if wait:
            self._await_start(sub, e.ContainerRestarted, self._stop_grace(timeout))
        return sub.result.container_id

    def remove(self, ref: str, force: bool = False, wait: bool = True,
               volumes: bool = False) -> str:
        """Remove (`volumes`: its anonymous volumes too); with `wait`, block until
        destroyed (or raise the removal error)."""
        sub = self.submit(c.RemoveContainer(ref=ref, force=force, volumes=volumes))
        cid = sub.result.container_id
        if wait:
            _, record = self.wait_event(
                cid, sub.last_event_id,
                lambda ev: isinstance(ev, e.ContainerDestroyed | e.RemovalFailed))
            if isinstance(record.event, e.RemovalFailed):
                raise MoorError(f'cannot remove container "{ref}": {record.event.error}')
        return cid

    def rename(self, ref: str, new_name: str) -> str:
        return self.submit(c.RenameContainer(ref=ref, new_name=new_name)).result.container_id

    def pause(self, ref: str, wait: bool = True) -> str:
        """Pause; with `wait`, until the host froze it (its failure raised as Docker's 500)."""
        return self._freeze(c.PauseContainer(ref=ref), wait)

    def unpause(self, ref: str, wait: bool = True) -> str:
        return self._freeze(c.UnpauseContainer(ref=ref), wait)

    def _freeze(self, cmd: c.PauseContainer | c.UnpauseContainer, wait: bool) -> str:
        sub = self.submit(cmd)
        cid = sub.result.container_id
        if wait:
            done = e.ContainerPaused if isinstance(cmd, c.PauseContainer) else e.ContainerUnpaused
            _, record = self.wait_event(
                cid, sub.last_event_id,
                lambda ev: isinstance(ev, done | e.FreezeFailed | e.ContainerDied))
            if isinstance(record.event, e.FreezeFailed):
                raise MoorError(record.event.error)
        return cid

    def create_exec(self, ref: str, config: ExecConfig) -> str:
        """Create an exec instance; return its id (64 hex, chosen here like container ids)."""
        exec_id = secrets.token_hex(32)
        self.submit(c.CreateExec(ref=ref, exec_id=exec_id, config=config))
        return exec_id

    def start_exec(self, exec_id: str, detach: bool = False) -> str:
        """Start it (its process starts on the host once a client attaches, unless
        detached); return the container id."""
        return self.submit(c.StartExec(exec_id=exec_id, detach=detach)).result.container_id

    def report(self, container_id: str, report: c.Command, wait: bool = False) -> str:
        """Append a worker/supervisor report for a container."""
        if wait:
            return self.submit(report, container_id=container_id, check=False).result.command_id
        return self.send(report, container_id=container_id)


_STOPPED_AT_ONCE = frozenset({"ContainerStopped", "ContainerDied"})
_REPORTS = frozenset(c.REPORT_TYPES)


def _start_error(event: e.StartFailed) -> MoorError:
    # Docker: exec failures (126/127) are the user's fault (400), the rest are 500s.
    if event.exit_code in (126, 127):
        return InvalidParameter(event.error)
    return MoorError(event.error)
