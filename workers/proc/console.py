"""The stdio pieces a container's supervisor (B) and an exec's (E) share.

A pty made inside the container's devpts (``open_console``, in the process that becomes
the container's or the exec's PID, as runc's console socket: the master goes back to the
supervisor by SCM_RIGHTS); Docker's stdcopy frame; the "resize <rows> <cols>" lines both
supervisors take on ``<sock>.ctl``; and a unix socket that appears only once it accepts.

Imported by the container's init before ``pivot_root``: nothing here is imported lazily.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

__all__ = ["CTL_SUFFIX", "frame", "listen", "open_console", "parse_resize", "receive_master",
           "resize_line", "send_resize", "set_size", "unlink_sockets"]

CTL_SUFFIX = ".ctl"  # the control socket beside a stdio socket: resize lines
_TIOCGPTN, _TIOCSPTLCK = 0x80045430, 0x40045431


def frame(stream: int, data: bytes) -> bytes:
    """Docker's stdcopy frame: stream (1 stdout, 2 stderr), three zero bytes, length."""
    return struct.pack(">BxxxI", stream, len(data)) + data


def open_console(console: socket.socket, uid: int = 0) -> None:
    """Make a pty of the devpts mounted at /dev/pts, the caller's controlling terminal.

    The slave becomes stdin, stdout and stderr (the caller must be a session leader); it
    is given to uid (its group kept, as runc's fixStdioPermissions) so the user's programs
    may reopen /dev/tty; the master is sent on ``console``; both are closed here.
    """
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    if uid:
        os.fchown(slave, uid, -1)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for target in (0, 1, 2):
        os.dup2(slave, target)
    os.close(slave)
    socket.send_fds(console, [b"m"], [master])
    os.close(master)
    console.close()


def receive_master(console: socket.socket) -> int:
    """Return the pty master the child sent (-1 if it failed first); closes ``console``."""
    try:
        _, fds, _, _ = socket.recv_fds(console, 16, 1)
    finally:
        console.close()
    return fds[0] if fds else -1


def resize_line(rows: int, cols: int) -> bytes:
    return f"resize {rows} {cols}\n".encode()


def parse_resize(line: bytes) -> tuple[int, int] | None:
    """Return (rows, cols) of a "resize <rows> <cols>" line; None for anything else."""
    parts = line.split()
    if len(parts) == 3 and parts[0] == b"resize" and parts[1].isdigit() \
            and parts[2].isdigit() and int(parts[1]) < 1 << 16 and int(parts[2]) < 1 << 16:
        return int(parts[1]), int(parts[2])
    return None


def set_size(master: int, line: bytes) -> None:
    """Apply one control line to a pty master (lines that are not resizes are ignored)."""
    size = parse_resize(line)
    if size is not None:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))


def send_resize(path: str, rows: int, cols: int) -> None:
    """Ask the supervisor serving ``path`` to resize its pty (OSError if it is not there)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctl:
        ctl.settimeout(5)
        ctl.connect(path + CTL_SUFFIX)
        ctl.sendall(resize_line(rows, cols))


def listen(path: str, backlog: int = 4) -> socket.socket:
    """Listen at path; the path appears only once connections are accepted (a client
    waiting for it must never meet a socket that still refuses)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = path + ".new"
    try:
        os.unlink(staging)
    except FileNotFoundError:
        pass
    sock.bind(staging)
    os.chmod(staging, 0o600)
    sock.listen(backlog)
    os.rename(staging, path)
    return sock


def unlink_sockets(path: str) -> None:
    """Remove a stdio socket and its control socket (already gone is fine)."""
    for name in (path, path + CTL_SUFFIX):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
