"""Serve attach from a container's supervisor (B), as conmon does: the stdio stays in B.

B holds PID 1's stdin (the write end of a pipe, or the pty master with a TTY) and serves
a unix socket, so whichever process serves the API (or none, during its restart) the
container's stdio is reachable, and several attachers may follow its output at once.

Protocol on ``<sock>``: the client's first line names what it attaches, e.g.
``attach stdin stdout stderr replay``; then its bytes are stdin, and the output comes
back raw with a TTY (or ``raw``), in stdcopy frames without. ``replay`` sends first what the process
wrote since it started (up to ``EARLY_BYTES``, kept ``EARLY_SECONDS``): a client that
attached before the start (`docker run -i`) reaches the socket only once the start is
recorded. The end of a client's input ends its attachment, except without a TTY under
StdinOnce, where it closes the container's stdin and the client keeps the output until
the exit (Docker's ``CopyStreams``). B closes every client once the output has ended.
``<sock>.ctl`` takes "resize <rows> <cols>" lines, as an exec supervisor's does.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from typing import NamedTuple

from workers.proc.console import CTL_SUFFIX, frame, listen, set_size, unlink_sockets
from workers.proc.spec import ProcessSpec

__all__ = ["EARLY_BYTES", "EARLY_SECONDS", "Hub", "Stdio", "Want", "hello", "input_end",
           "parse_hello", "stdio_for"]

EARLY_BYTES = 1 << 20
EARLY_SECONDS = 30.0
_BACKLOG_LIMIT = 4 << 20  # output queued for a stuck attacher before it is dropped
_STDIN_LIMIT = 1 << 16  # stdin bytes held before attachers are read no further
_HELLO_LIMIT = 256
_STREAMS = {"stdout": 1, "stderr": 2}
_IN, _OUT, _GONE = select.POLLIN, select.POLLOUT, select.POLLHUP | select.POLLERR | \
    select.POLLNVAL


class Want(NamedTuple):
    """What one attacher asked for in its first line."""

    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    replay: bool = False
    raw: bool = False  # no stdcopy frames even without a TTY (the websocket attach)


def hello(want: Want) -> bytes:
    """Return the first line a client sends for ``want``."""
    return b" ".join([b"attach", *(k.encode() for k, v in want._asdict().items() if v)]) + b"\n"


def parse_hello(line: bytes) -> Want | None:
    """Return the Want a first line names; None if it is not an attach line."""
    words = line.split()
    if not words or words[0] != b"attach" or not set(words[1:]) <= {
            k.encode() for k in Want._fields}:
        return None
    return Want(**{k: k.encode() in words[1:] for k in Want._fields})


def input_end(stdin: bool, tty: bool, stdin_once: bool) -> str:
    """Decide what the end of an attacher's input means (Docker's ``CopyStreams``).

    "close-stdin": the container's stdin closes and the attacher keeps the output;
    "detach": its attachment ends; "none": it sent no stdin, nothing changes.
    """
    if not stdin:
        return "none"
    return "close-stdin" if stdin_once and not tty else "detach"


class Stdio(NamedTuple):
    """A container process's stdio as its supervisor makes it: what C gets, what B keeps."""

    child: tuple[int, int, int]  # C's stdin, stdout, stderr (-1: /dev/null; all with a TTY)
    stdin_w: int  # B's end of C's stdin (-1: none; with a TTY the pty master, known later)
    outputs: dict[int, str]  # B's read ends -> the log's stream names


def stdio_for(spec: ProcessSpec) -> Stdio:
    """Make the pipes of a process without a TTY (with one, C makes the pty)."""
    if spec.tty:
        return Stdio((-1, -1, -1), -1, {})
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    stdin_r, stdin_w = os.pipe() if spec.open_stdin else (-1, -1)
    return Stdio((stdin_r, stdout_w, stderr_w), stdin_w, {stdout_r: "stdout", stderr_r: "stderr"})


class _Client:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.want: Want | None = None  # None until its first line is in
        self.head = b""
        self.out = bytearray()
        self.reading = True


class Hub:
    """B's attach server: call ``interest``, poll, ``handle`` each ready fd; ``output``
    with every chunk the process writes; ``close`` once the output has ended."""

    def __init__(self, path: str, tty: bool, stdin_w: int, stdin_once: bool,
                 master: int = -1) -> None:
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        self.path, self.tty, self.stdin_once, self.master = path, tty, stdin_once, master
        self.stdin_w = stdin_w
        if stdin_w >= 0:
            os.set_blocking(stdin_w, False)  # a process not reading must not stall B
        self.ctl = listen(path + CTL_SUFFIX)  # first: once the main socket shows, both listen
        self.main = listen(path, backlog=16)
        for s in (self.ctl, self.main):
            s.setblocking(False)
        self.clients: dict[int, _Client] = {}
        self.controls: dict[int, socket.socket] = {}
        self.stdin = bytearray()
        self.closing_stdin = False
        self.early: list[tuple[str, bytes]] | None = []
        self.early_size = 0
        self.early_until = time.monotonic() + EARLY_SECONDS

    @classmethod
    def for_spec(cls, spec: ProcessSpec, stdin_w: int, master: int) -> Hub:
        """Serve a container's attach: its stdin is the pty master with a TTY."""
        if master >= 0:
            return cls(spec.attach_socket, True, master if spec.open_stdin else -1,
                       spec.stdin_once, master)
        return cls(spec.attach_socket, False, stdin_w, spec.stdin_once)

    def owns(self, fd: int) -> bool:
        """Whether ``close`` closes fd (the pty master: B's output fd as well)."""
        return fd >= 0 and fd in (self.stdin_w, self.master)

    def interest(self) -> dict[int, int]:
        """The fds to poll and for what."""
        want = {self.main.fileno(): _IN, self.ctl.fileno(): _IN}
        want.update((fd, _IN) for fd in self.controls)
        room = len(self.stdin) < _STDIN_LIMIT
        for fd, client in self.clients.items():
            events = _IN if client.reading and (client.want is None or room) else 0
            want[fd] = events | (_OUT if client.out else 0)
        if self.stdin and self.stdin_w >= 0:
            want[self.stdin_w] = want.get(self.stdin_w, 0) | _OUT
        return want

    def handle(self, fd: int, events: int) -> None:
        """Act on one ready fd (fds that are not the hub's are ignored)."""
        if fd == self.main.fileno():
            self._accept()
        elif fd == self.ctl.fileno():
            try:
                conn, _ = self.ctl.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self.controls[conn.fileno()] = conn
        elif fd in self.controls:
            self._control(self.controls[fd])
        elif fd in self.clients:
            client = self.clients[fd]
            if events & _IN or (events & _GONE and client.reading):
                self._read(client)
            if fd in self.clients and events & _OUT:
                self._flush(client)
            if fd in self.clients and events & _GONE and not client.reading:
                self._drop(client)
        if fd == self.stdin_w and events & (_OUT | _GONE):
            self._write_stdin()

    def output(self, stream: str, data: bytes) -> None:
        """Send what the process wrote to every attacher that wants it; keep it early on."""
        if self.early is not None:
            if time.monotonic() > self.early_until or self.early_size + len(data) > EARLY_BYTES:
                self.early = None  # attachers that come later did not wait for the start
            else:
                self.early.append((stream, data))
                self.early_size += len(data)
        for client in list(self.clients.values()):
            self._send(client, stream, data)

    def close(self) -> None:
        """Give each attacher what is queued for it (briefly), then close everything."""
        deadline = time.monotonic() + 2.0
        for client in list(self.clients.values()):
            if client.out and time.monotonic() < deadline:
                try:
                    client.sock.settimeout(max(0.05, deadline - time.monotonic()))
                    client.sock.sendall(client.out)
                except OSError:
                    pass
            client.sock.close()
        self.clients.clear()
        for conn in self.controls.values():
            conn.close()
        self.main.close()
        self.ctl.close()
        unlink_sockets(self.path)
        for fd in {self.stdin_w, self.master} - {-1}:
            os.close(fd)
        self.stdin_w = self.master = -1

    # --- the parts ------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            conn, _ = self.main.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.clients[conn.fileno()] = _Client(conn)

    def _control(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            del self.controls[conn.fileno()]
            conn.close()
            return
        for line in data.splitlines():
            if self.master >= 0:
                try:
                    set_size(self.master, line)
                except OSError:
                    pass  # the process is gone; nothing to resize

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if client.want is None:
            self._greet(client, data)
        else:
            self._take(client, data)

    def _greet(self, client: _Client, data: bytes) -> None:
        client.head += data
        line, sep, rest = client.head.partition(b"\n")
        if not sep:
            if not data or len(client.head) > _HELLO_LIMIT:
                self._drop(client)
            return
        want = parse_hello(line)
        if want is None:
            self._drop(client)
            return
        client.want, client.head = want, b""
        if want.replay and self.early:
            for stream, chunk in self.early:
                self._send(client, stream, chunk)
        if rest:
            self._take(client, rest)
        if not data and client.sock.fileno() in self.clients:
            self._take(client, b"")

    def _take(self, client: _Client, data: bytes) -> None:
        """Pass an attacher's bytes to stdin; at the end of its input, Docker's rule."""
        assert client.want is not None
        stdin = client.want.stdin and self.stdin_w >= 0
        if data:
            if stdin and not self.closing_stdin:
                self.stdin += data
                self._write_stdin()
            return
        client.reading = False
        end = input_end(stdin, self.tty, self.stdin_once)
        if end == "close-stdin":
            self.closing_stdin = True
            self._write_stdin()
        elif end == "detach":
            self._drop(client)

    def _send(self, client: _Client, stream: str, data: bytes) -> None:
        want = client.want
        if want is None or not getattr(want, stream, False):
            return
        client.out += data if self.tty or want.raw else frame(_STREAMS.get(stream, 1), data)
        if len(client.out) > _BACKLOG_LIMIT:
            self._drop(client)  # a stuck attacher must not hold the container's output
        else:
            self._flush(client)

    def _flush(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop(client)
            return
        del client.out[:sent]

    def _drop(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()

    def _write_stdin(self) -> None:
        """Write what attachers sent; close stdin once drained if StdinOnce asked it."""
        while self.stdin and self.stdin_w >= 0:
            try:
                written = os.write(self.stdin_w, self.stdin)
            except BlockingIOError:
                return
            except OSError as e:  # EPIPE: the process closed its stdin; EIO: the pty's
                if e.errno not in (errno.EPIPE, errno.EIO):
                    raise
                self.stdin.clear()
                break
            del self.stdin[:written]
        if self.closing_stdin and not self.stdin and self.stdin_w >= 0 and not self.tty:
            os.close(self.stdin_w)
            self.stdin_w = -1
