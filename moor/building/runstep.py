"""Run a RUN step in a container through the engine's own lifecycle, and commit it.

The container is created, started and waited for with the control-plane client, like any
other (so the journal records its create, start and die), its output is followed in its
json log, and its overlay upper dir becomes the step's layer through the code
`docker commit` uses (workers.storage.commit.add_upper_layer) and the same
`CommitContainer` record (image `create`, container `commit`). The builder removes it
afterwards (`destroy`), as `--rm` asks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from commands.client import Client
from engine.errors import MoorError, Timeout
from events import model as e
from events.specs import ContainerConfig, HostConfig
from projections.stream import tail_id
from workers.proc.logs import read_logs
from workers.storage.rootfs import container_dir

__all__ = ["Cancelled", "RunFailed", "RunResult", "remove_container", "run_container"]

_WAIT_SLICE = 2.0  # seconds per blocking wait, so a cancelled build is noticed


class Cancelled(MoorError):
    """The client went away: the build stops and removes what it started."""


class RunFailed(MoorError):
    """A RUN exited non-zero (`code`: its exit code, as Docker's JSON error carries)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RunResult:
    """The container a RUN ran in and how it ended."""

    container_id: str
    exit_code: int = 0


def _log_lines(root: str, cid: str, follow: bool) -> Iterator[str]:
    cdir = container_dir(root, cid)
    path = os.path.join(cdir, f"{cid}-json.log")
    if not os.path.exists(path):
        return
    for _stream, _when, line in read_logs(path, follow=follow,
                                          state_dir=os.path.join(cdir, "state")):
        yield line


def create_container(client: Client, config: ContainerConfig) -> str:
    """Create the step's container (default bridge network, json-file log)."""
    return client.create(config, HostConfig())


def run_container(client: Client, root: str, cid: str, stop: threading.Event | None,
                  result: RunResult) -> Iterator[str]:
    """Start the container, yield its output as it comes, and fill `result` with how it
    exited once it did. A start failure raises RunFailed with the engine's text."""
    cursor = tail_id(client.redis, client.keys)
    try:
        client.start(cid)
    except MoorError as err:
        raise RunFailed(err.message) from None
    shown = 0
    for line in _log_lines(root, cid, follow=True):
        shown += 1
        yield line
        if stop is not None and stop.is_set():
            raise Cancelled("the build was cancelled")
    while True:
        if stop is not None and stop.is_set():
            raise Cancelled("the build was cancelled")
        try:
            _, record = client.wait_event(cid, cursor,
                                          lambda ev: isinstance(ev, e.ContainerDied),
                                          timeout=_WAIT_SLICE)
        except Timeout:
            continue
        break
    died = record.event
    assert isinstance(died, e.ContainerDied)
    result.exit_code = died.exit_code
    # Whatever the follow missed (a log opened late, the last lines): skip what was shown.
    for index, line in enumerate(_log_lines(root, cid, follow=False)):
        if index >= shown:
            yield line


def remove_container(client: Client, cid: str) -> None:
    """Remove an intermediate container and its anonymous volumes (VOLUME in the image)."""
    client.remove(cid, force=True, volumes=True)
