"""Write decided batches with the fenced Lua script, then hand their jobs to rq.

A batch is written in one atomic script call (scripts.WRITE) that checks the fencing
epoch and each touched container's version first. The reducer either writes and waits
(commit) or sends the write ahead on a connection of its own and reads the reply later
(send), so Redis runs one batch's write while Python decides the next.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import redis as redislib

from engine import scripts
from engine.batch import Batch, Redo
from engine.keys import Keys
from engine.lease import Deposed
from engine.outbox import JobOutbox

__all__ = ["BatchWriter"]

log = logging.getLogger("moorage.reducer")


class BatchWriter:
    """The single writer's write path: the script, its keys and the pipelining connection."""

    def __init__(self, redis: Any, keys: Keys, outbox: JobOutbox) -> None:
        self.redis = redis
        self.outbox = outbox
        self._script = redis.register_script(scripts.WRITE)
        self.write = self._script  # one synchronous write (reloads the script if needed)
        # The inbox streams a batch acknowledges follow these (Batch.streams).
        self._keys = [keys.events, keys.containers, keys.versions, keys.world, keys.done,
                      keys.epoch, keys.quarantine, keys.outbox, keys.names]
        self._conn: Any = None  # the connection send() pipelines writes on

    def reset(self) -> None:
        """Drop the pipelining connection, so the next send reconnects.

        It may predate a Redis restart (the pool checks its own connections, this one is
        ours): reconnect on the next write rather than fail it.
        """
        if self._conn is not None:
            self._conn.disconnect()

    def commit(self, batch: Batch) -> None:
        """Write one decided batch (the single atomic write), then hand its jobs to rq."""
        self._written(self.write(keys=[*self._keys, *batch.streams], args=batch.argv),
                      batch)

    def send(self, batch: Batch, read_next: tuple[Any, ...] | None
             ) -> Callable[[], Any]:
        """Send one batch's write (the script commit runs) without waiting, and with
        read_next (a command) behind it; return the function that reads the replies,
        acts on the write's like commit, and returns read_next's reply (None without)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = self.redis.connection_pool.make_connection()
        keys = [*self._keys, *batch.streams]
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", self._script.sha, len(keys), *keys, *batch.argv)]
        if read_next:
            commands.append(read_next)
        try:
            conn.send_packed_command(conn.pack_commands(commands))
        except BaseException:
            conn.disconnect()
            raise

        def receive() -> Any:
            try:
                try:
                    result = self.redis.parse_response(conn, "EVALSHA")
                except redislib.exceptions.NoScriptError as exc:
                    result = exc  # nothing ran; run it below, once the read is consumed
                reply = self.redis.parse_response(conn, "XREADGROUP") if read_next else None
            except BaseException:
                conn.disconnect()  # never leave a reply unread on the connection
                raise
            if isinstance(result, redislib.exceptions.NoScriptError):
                # Redis restarted or flushed its scripts: run it the loading way.
                result = self.write(keys=keys, args=batch.argv)
            self._written(result, batch)
            return reply
        return receive

    def _written(self, result: Any, batch: Batch) -> None:
        status = result[0].decode() if isinstance(result[0], bytes) else result[0]
        if status == "FENCED":
            raise Deposed()
        if status != "OK":
            log.warning("write refused (%s): rebuilding the snapshot from the events", result)
            raise Redo()
        self.outbox.drain(batch.epoch)
