"""The `moor` side of an attachment: this terminal joined to a supervisor's socket.

`moor exec` (an exec supervisor's socket) and `moor attach`, `moor run -it`,
`moor start -ai` (a container supervisor's) relay the same way: with a TTY the terminal
goes raw, resizes follow SIGWINCH and the detach keys end the attachment; without one
stdcopy frames are split to stdout and stderr. Imported only by the commands that attach.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
import tty as ttymod
from typing import Any

from commands.options import detach_at, keys_tail
from engine.errors import Internal
from workers.proc.console import send_resize

__all__ = ["connect", "relay"]


def connect(path: str, timeout: float = 10.0, what: str = "exec session") -> socket.socket:
    """Connect to a supervisor's socket, waiting for it to appear (Docker's text if not)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise Internal(f"timeout waiting for {what} ready") from None
            time.sleep(0.005)


def _resize(path: str) -> None:
    try:
        rows, cols, _, _ = struct.unpack(
            "HHHH", fcntl.ioctl(sys.stdin.fileno(), termios.TIOCGWINSZ, b"\0" * 8))
        send_resize(path, rows, cols)
    except OSError:
        pass


def relay(sock: socket.socket, path: str, tty: bool, interactive: bool, keys: bytes) -> bool:
    """Relay until the output ends; True if the user detached. Closes ``sock``."""
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
                    at = detach_at(seen, data, keys) if tty else None
                    if at is not None:
                        if at:
                            sock.sendall(data[:at])
                        return True
                    seen = keys_tail(seen, data, keys)
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
