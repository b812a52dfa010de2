"""`moor exec [-i] [-t] [-d] [-e K=V] [-w DIR] [-u USER] [--privileged] CONTAINER CMD…`.

Creates and starts the exec through the journal like any client, then attaches straight
to its supervisor's socket on this host (as the API does): the terminal in raw mode with
`-t` (resizes follow SIGWINCH; ctrl-p ctrl-q detaches), stdcopy frames split to stdout
and stderr without. Exits with the process's exit code, as `docker exec` does.
"""

from __future__ import annotations

import argparse
from typing import Any

from moor.failures import guard

__all__ = ["register"]


def _exec(args: argparse.Namespace) -> int:
    from commands.options import detach_key_bytes
    from engine.config import data_root, engine_id
    from engine.errors import InvalidParameter
    from events import model as e
    from events.specs import ExecConfig
    from moor.connect import client_for
    from moor.terminal import connect, relay
    from projections.stream import tail_id
    from workers.interactive import exec_socket

    client = client_for(args.redis_url, actor=args.actor, reason=args.reason,
                        timeout=args.timeout)
    for item in args.env:
        if "=" not in item:
            raise InvalidParameter(f"invalid environment variable: {item}")
    config = ExecConfig(cmd=tuple(args.command), env=tuple(args.env), user=args.user or "",
                        working_dir=args.workdir or "", tty=args.tty,
                        attach_stdin=args.interactive, attach_stdout=not args.detach,
                        attach_stderr=not args.detach, privileged=args.privileged,
                        detach_keys=args.detach_keys or "")
    redis, shard_keys = client.store(args.container)
    after = tail_id(redis, shard_keys)
    exec_id = client.create_exec(args.container, config)
    cid = client.start_exec(exec_id, detach=args.detach)
    if args.detach:
        return 0
    path = exec_socket(engine_id(data_root(), shard_keys.prefix, shard_keys.shard), exec_id)
    keys = detach_key_bytes(args.detach_keys or "")
    if relay(connect(path), path, args.tty, args.interactive, keys):
        return 0  # detached: the process keeps running
    _, record = client.wait_event(cid, after, lambda ev: isinstance(ev, e.ExecDied)
                                  and ev.exec_id == exec_id, timeout=30)
    assert isinstance(record.event, e.ExecDied)
    return record.event.exit_code


def register(sub: Any) -> None:
    """Add `moor exec`."""
    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--detach-keys")
    p.add_argument("container")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=guard(_exec))
