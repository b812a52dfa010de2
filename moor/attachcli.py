"""`moor attach [--detach-keys K] [--no-stdin] CONTAINER`, and the attaching half of
`moor run -i/-t` and `moor start -a/-i`.

A container with a TTY or an open stdin is attached on its supervisor's socket on this
host (`workers.proc.hub`), as the API does; any other container's output is followed in
its json-file log. Exits with the container's exit code once it has stopped, or 0 when
the detach keys (default ctrl-p ctrl-q, TTY only) left it running.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from moor.failures import guard

if TYPE_CHECKING:
    from commands.client import Client
    from engine.core.state import Container

__all__ = ["attach_to", "register"]

# Once the output has ended, wait for the exit as the docker CLI does: without a limit
# (an attacher whose input ended may leave a container that still runs).
_EXIT_WAIT = 1e9


def _checked(ctr: Container) -> None:
    """Refuse as the docker CLI does before attaching (the daemon does not)."""
    from engine.errors import Conflict

    if not ctr.running:
        raise Conflict("You cannot attach to a stopped container, start it first")
    if ctr.paused:
        raise Conflict("You cannot attach to a paused container, unpause it first")
    if ctr.restarting:
        raise Conflict("You cannot attach to a restarting container, wait until it is running")


def attach_to(client: Client, cid: str, after: str, *, stdin: bool, keys_text: str,
              replay: bool) -> int:
    """Attach this terminal to a running container until it stops (its exit code) or the
    user detaches (0). ``after``: an events cursor from before the attachment began;
    ``replay``: the output since the start too (the caller started it)."""
    from commands.options import detach_key_bytes
    from engine.config import data_root, engine_id
    from engine.errors import InvalidParameter
    from engine.snapshot import load_world
    from events import model as e
    from moor.terminal import connect, relay
    from workers.interactive import attach_socket
    from workers.proc.hub import Want, hello

    try:
        keys = detach_key_bytes(keys_text)
    except ValueError:
        raise InvalidParameter(f"Invalid detach keys ({keys_text}) provided") from None
    redis, shard_keys = client.store(cid)
    world, _ = load_world(redis, shard_keys)
    ctr = world.containers[cid]
    path = attach_socket(engine_id(data_root(), shard_keys.prefix, shard_keys.shard), cid,
                         ctr.config)
    if path and ctr.running:
        stdin = stdin and ctr.config.open_stdin
        sock = connect(path, what="attach")
        sock.sendall(hello(Want(stdin=stdin, stdout=True, stderr=True, replay=replay)))
        if relay(sock, path, ctr.config.tty, stdin, keys):
            return 0  # detached: the container keeps running
    elif ctr.running:
        _follow_log(cid)
    _, record = client.wait_event(cid, after, lambda ev: isinstance(
        ev, e.ContainerDied | e.StartFailed | e.ContainerDestroyed), timeout=_EXIT_WAIT)
    return getattr(record.event, "exit_code", 0)


def _follow_log(cid: str) -> None:
    """Print a container's output from now until its process ends."""
    import time

    from engine.config import data_root
    from workers.proc.logs import read_logs

    cdir = os.path.join(data_root(), "containers", cid)
    for stream, _, line in read_logs(os.path.join(cdir, f"{cid}-json.log"),
                                     since=time.time_ns(), follow=True,
                                     state_dir=os.path.join(cdir, "state")):
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.write(line)
        out.flush()


def _attach(args: argparse.Namespace) -> int:
    from engine.core.names import resolve
    from engine.snapshot import load_world
    from moor.connect import client_for
    from projections.stream import tail_id

    client = client_for(args.redis_url, actor=args.actor, reason=args.reason,
                        timeout=args.timeout)
    after = tail_id(client.redis, client.keys)
    world, _ = load_world(client.redis, client.keys)
    ctr = resolve(world, args.container)
    _checked(ctr)
    return attach_to(client, ctr.id, after, stdin=not args.no_stdin,
                     keys_text=args.detach_keys or "", replay=False)


def register(sub: Any) -> None:
    """Add `moor attach`."""
    p = sub.add_parser("attach", help="attach this terminal to a running container")
    p.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    p.add_argument("--detach-keys", help="override the key sequence for detaching")
    p.add_argument("container")
    p.set_defaults(func=guard(_attach), long_running=True)
