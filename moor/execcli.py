"""`moor exec [-i] [-t] [-d] [-e K=V] [-w DIR] [-u USER] [--privileged] CONTAINER CMD…`.

Creates and starts the exec through the journal like any client, then attaches straight
to its supervisor's socket on this host (as the API does): the terminal in raw mode with
`-t` (resizes follow SIGWINCH; ctrl-p ctrl-q detaches), stdcopy frames split to stdout
and stderr without. Exits with the process's exit code, as `docker exec` does.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import struct
import sys
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
    after = tail_id(client.redis, client.keys)
    exec_id = client.create_exec(args.container, config)
    cid = client.start_exec(exec_id, detach=args.detach)
    if args.detach:
        return 0
    path = exec_socket(engine_id(data_root(), client.keys.prefix), exec_id)
    keys = detach_key_bytes(args.detach_keys or "")
    if _attach(path, args.tty, args.interactive, keys):
        return 0  # detached: the process keeps running
    _, record = client.wait_event(cid, after, lambda ev: isinstance(ev, e.ExecDied)
                                  and ev.exec_id == exec_id, timeout=30)
    assert isinstance(record.event, e.ExecDied)
    return record.event.exit_code


def _connect(path: str) -> socket.socket:
    import time

    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                from engine.errors import Internal

                raise Internal("timeout waiting for exec session ready") from None
            time.sleep(0.005)


def _resize(path: str) -> None:
    import fcntl
    import termios

    try:
        rows, cols, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(sys.stdin.fileno(), termios.TIOCGWINSZ, b"\0" * 8))
        with socket.socket(socket.AF_UNIX) as ctl:
            ctl.connect(path + ".ctl")
            ctl.sendall(f"resize {rows} {cols}\n".encode())
    except OSError:
        pass


def _attach(path: str, tty: bool, interactive: bool, keys: bytes) -> bool:
    """Relay until the output ends; True if the user detached."""
    import termios
    import tty as ttymod

    sock = _connect(path)
    saved: Any = None
    if tty and os.isatty(0):
        saved = termios.tcgetattr(0)
        ttymod.setraw(0)
        _resize(path)
        signal.signal(signal.SIGWINCH, lambda *_: _resize(path))
    out, err = sys.stdout.buffer, sys.stderr.buffer
    pending = b""
    seen = b""
    stdin_open = interactive
    try:
        while True:
            watch = [sock] + ([0] if stdin_open else [])
            ready, _, _ = select.select(watch, [], [])
            if 0 in ready:
                data = os.read(0, 65536)
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    stdin_open = False
                else:
                    if tty:
                        seen = (seen + data)[-len(keys):]
                        if seen == keys:
                            return True
                    sock.sendall(data)
            if sock in ready:
                data = sock.recv(65536)
                if not data:
                    return False
                if tty:
                    out.write(data)
                    out.flush()
                    continue
                pending += data
                while len(pending) >= 8:
                    kind, size = struct.unpack(">BxxxI", pending[:8])
                    if len(pending) < 8 + size:
                        break
                    target = err if kind == 2 else out
                    target.write(pending[8:8 + size])
                    target.flush()
                    pending = pending[8 + size:]
    finally:
        sock.close()
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


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
