"""Container attach with stdin and a TTY (issue 10): the docker CLI, docker-py and `moor`.

The container's supervisor holds its stdin (a pipe, or a pty master made in the
container's devpts) and serves attach on a unix socket; these tests drive it the way a
user does: piping into `docker run -i`, typing into `docker attach` on a real terminal
(a pty this test holds), resizing it, detaching with ctrl-p ctrl-q.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import pytest

from tests.e2e.conftest import REPO, Engine, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    UnixHTTPConnection,
    api_fixtures,
    cid_of,
    inspect,
)

pytestmark = pytest.mark.privileged


docker_api, dk, image = api_fixtures("attach-api", "attach", image="image")


def _docker_in(dk: DockerApi, *args: str, data: str, timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], input=data, env=dk.docker_env,
                          capture_output=True, text=True, timeout=timeout)


class Terminal:
    """The docker CLI on a pty of ours, as a user at a terminal runs it."""

    def __init__(self, dk: DockerApi, *args: str, rows: int = 33, cols: int = 97) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc = subprocess.Popen(["docker", *args], env=dk.docker_env, stdin=slave,
                                     stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.seen = b""

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, needle: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen in {self.seen!r}")
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # EIO: the CLI closed the terminal
                    time.sleep(0.05)
        return self.seen

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.proc.send_signal(28)  # SIGWINCH: a terminal's size changed

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None or self.master >= 0:
            self.close()

    def close(self) -> int:
        if self.master < 0:
            return self.proc.returncode
        try:
            self.proc.wait(timeout=20)
            while select.select([self.master], [], [], 0.2)[0]:  # what it printed last
                self.seen += os.read(self.master, 65536)
        except OSError:
            pass  # EIO: nothing more
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)
            self.master = -1
        return self.proc.returncode


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while len(data) >= 8:
        kind, size = struct.unpack(">BxxxI", data[:8])
        out.append((kind, data[8:8 + size]))
        data = data[8 + size:]
    return out


def test_piped_stdin_reaches_docker_run_i(dk: DockerApi, image: str) -> None:
    done = _docker_in(dk, "run", "-i", "--rm", image, "cat", data="x\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "x\n", ""), dk.log_tail()
    # Output written before stdin is read, and the exit code, come back too.
    done = _docker_in(dk, "run", "-i", "--rm", image, "sh", "-c",
                      "echo first; read line; echo got $line; echo err >&2; exit 3",
                      data="hello\n")
    assert (done.returncode, done.stdout, done.stderr) == (3, "first\ngot hello\n", "err\n")


def test_a_tty_container_attaches_resizes_and_detaches(dk: DockerApi, image: str,
                                                       engine: Engine) -> None:
    since = str(int(engine.redis.time()[0]) - 1)
    cid = cid_of(dk.docker("run", "-d", "-it", image, "sh"))
    config = inspect(dk, cid)["Config"]
    assert (config["Tty"], config["OpenStdin"], config["StdinOnce"]) == (True, True, False)
    with Terminal(dk, "attach", cid, rows=33, cols=97) as term:
        term.write(b"tty; stty size; echo $((6*7))\r")
        seen = term.expect(b"42")
        assert b"/dev/pts/0" in seen and b"33 97" in seen, seen
        term.resize(40, 120)
        time.sleep(0.3)
        term.write(b"stty size\r")
        term.expect(b"40 120")
        term.write(b"\x10\x11")  # ctrl-p ctrl-q
        code = term.close()
    # `docker attach` reports the detach as its error (docker/cli attach.go); run -it does not.
    assert code == 1 and b"read escape sequence" in term.seen, (code, term.seen)
    state = inspect(dk, cid)["State"]
    assert state["Running"] is True, state
    # Its output went to the log as stdout (raw, as Docker logs a TTY's).
    assert "/dev/pts/0" in dk.docker("logs", cid).stdout
    # Attach again: the shell is still there and still reads its terminal.
    with Terminal(dk, "attach", cid) as term:
        term.write(b"echo again$((1+1))\r")
        term.expect(b"again2")
        term.write(b"exit 4\r")
        assert term.close() == 4, term.seen
    assert inspect(dk, cid)["State"]["ExitCode"] == 4

    def seen() -> list[str]:  # Docker's attach and resize events, from the journal
        lines = dk.docker("events", "--since", since, "--until", "0s", "--filter",
                          f"container={cid}", "--filter", "event=attach", "--filter",
                          "event=resize", "--format", "{{.Action}} "
                          "{{index .Actor.Attributes \"width\"}}").stdout.splitlines()
        return [line.strip() for line in lines]

    wait_for(lambda: {"attach", "resize 120"} <= set(seen()) and seen().count("attach") == 2,
             15, "attach and resize events", lambda: repr(seen()))


def test_docker_run_it_on_a_terminal(dk: DockerApi, image: str) -> None:
    with Terminal(dk, "run", "-it", "--rm", image, "sh", "-c",
                  "tty; stty size; read line; echo got $line", rows=21, cols=77) as term:
        term.expect(b"/dev/pts/0")
        term.write(b"abc\r")
        term.expect(b"got abc")
        assert term.close() == 0, term.seen
    with Terminal(dk, "run", "-it", "--name", f"runit{dk.engine.token}", image, "sh") as term:
        term.write(b"echo up$((2+3))\r")
        term.expect(b"up5")
        term.write(b"\x10\x11")
        assert term.close() == 0, term.seen  # detached: success, and it keeps running
    assert inspect(dk, f"runit{dk.engine.token}")["State"]["Running"] is True
    dk.docker("rm", "-f", f"runit{dk.engine.token}")


def test_attach_refusals_get_dockers_texts(dk: DockerApi, image: str) -> None:
    cid = cid_of(dk.docker("run", "-d", image, "true"))
    wait_for(lambda: not inspect(dk, cid)["State"]["Running"], 10, "the exit")
    done = dk.docker("attach", cid, check=False)
    assert done.returncode == 1
    assert "attach to a stopped container, start it first" in done.stderr, done.stderr
    status, _, body = dk.http("POST", f"/containers/{cid}/resize?h=10&w=20")
    assert (status, json.loads(body)["message"]) == (409, f"container {cid} is not running")
    status, _, body = dk.http("POST", f"/containers/{cid}/resize?h=x&w=20")
    assert (status, json.loads(body)["message"]) == (400, 'invalid resize height "x": '
                                                          "invalid syntax")
    running = cid_of(dk.docker("run", "-d", "-i", image, "cat"))
    dk.docker("pause", running)
    try:
        status, headers, body = dk.http("POST", f"/containers/{running[:12]}/attach?stream=1"
                                        "&stdout=1", headers={"Upgrade": "tcp",
                                                              "Connection": "Upgrade"})
        assert (status, body) == (409, f"container {running[:12]} is paused, unpause the "
                                       "container before attach\r\n".encode())
        assert headers["Content-Type"] == "application/vnd.docker.raw-stream"
    finally:
        dk.docker("unpause", running)
    status, _, body = dk.http("POST", f"/containers/{running}/attach?stream=1"
                              "&detachKeys=ctrl-", headers={"Upgrade": "tcp"})
    assert (status, body) == (400, b"Invalid detach keys (ctrl-) provided\r\n")
    status, _, body = dk.http("POST", "/containers/nosuchthing/attach?stream=1")
    assert (status, body) == (404, b"No such container: nosuchthing\r\n")
    dk.docker("rm", "-f", cid, running)


def _hijack(dk: DockerApi, cid: str, query: str) -> socket.socket:
    """POST attach with `Upgrade: tcp` on a raw socket; return it past the headers."""
    conn = UnixHTTPConnection(dk.socket)
    conn.connect()
    sock = conn.sock
    sock.sendall(f"POST /v1.51/containers/{cid}/attach?{query} HTTP/1.1\r\nHost: x\r\n"
                 "Connection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 UPGRADED\r\n"), head
    assert b"application/vnd.docker.multiplexed-stream" in head, head
    return sock


def _read_until(sock: socket.socket, needle: bytes, timeout: float = 20) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while needle not in b"".join(p for _, p in _frames(data)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_two_attachers_share_the_output_and_stdin(dk: DockerApi, image: str) -> None:
    cid = cid_of(dk.docker("run", "-d", "-i", image, "sh", "-c",
                           "while read l; do echo out:$l; echo err:$l >&2; done"))
    one = _hijack(dk, cid, "stream=1&stdin=1&stdout=1&stderr=1")
    two = _hijack(dk, cid, "stream=1&stdout=1&stderr=1")
    try:
        time.sleep(0.3)  # both are on the supervisor's socket
        one.sendall(b"ping\n")
        for sock in (one, two):
            frames = _frames(_read_until(sock, b"err:ping"))
            assert (1, b"out:ping\n") in frames and (2, b"err:ping\n") in frames, frames
    finally:
        one.close()
        two.close()
    # Without StdinOnce a leaving attacher leaves stdin open for the next one.
    three = _hijack(dk, cid, "stream=1&stdin=1&stdout=1")
    try:
        three.sendall(b"again\n")
        assert (1, b"out:again\n") in _frames(_read_until(three, b"out:again"))
    finally:
        three.close()
    assert inspect(dk, cid)["State"]["Running"] is True
    dk.docker("rm", "-f", cid)


def test_docker_py_attach_socket_with_stdin(dk: DockerApi, image: str) -> None:
    docker = pytest.importorskip("docker")
    sdk = docker.DockerClient(base_url=f"unix://{dk.socket}", version="auto", timeout=60)
    try:
        ctr = sdk.containers.run(image, ["tr", "a-z", "A-Z"], detach=True, stdin_open=True)
        sock = sdk.api.attach_socket(ctr.id, params={"stdin": 1, "stdout": 1, "stream": 1})
        raw: Any = sock._sock
        raw.sendall(b"shout\n")
        assert (1, b"SHOUT\n") in _frames(_read_until(raw, b"SHOUT"))
        sock.close()
        raw.close()
        assert sdk.api.inspect_container(ctr.id)["Config"]["OpenStdin"] is True
        ctr.remove(force=True)
    finally:
        sdk.close()


def test_moor_run_it_and_attach(engine: Engine, dk: DockerApi) -> None:
    done = engine.moor("run", "-i", "--rm", "busybox", "sh", "-c", "read l; echo moor:$l",
                       input="hi\n")
    assert done.stdout == "moor:hi\n"
    # A stdin attacher's EOF ends its attachment (no StdinOnce): follow the output only.
    # The container ticks until the test has seen the attach receive a tick, then ends:
    # no race with a loaded machine's slow `moor attach` start.
    cid = engine.moor("run", "-d", "-i", "busybox", "sh", "-c",
                      "until [ -e /go ]; do echo tick; sleep 0.2; done; echo late; exit 5"
                      ).stdout.strip()
    engine.track(cid)
    attach = subprocess.Popen([sys.executable, "-m", "moor.cli", "attach", "--no-stdin", cid],
                              cwd=REPO, env=engine.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert attach.stdout is not None
        first = attach.stdout.readline()
        assert first == "tick\n", (first, attach.stderr.read() if attach.stderr else "")
        dk.docker("exec", cid, "touch", "/go")
        out, err = attach.communicate(timeout=30)
    finally:
        if attach.poll() is None:
            attach.kill()
            attach.wait()
    assert attach.returncode == 5 and out.endswith("late\n"), (attach.returncode, out, err)
    engine.moor("rm", "-f", cid)
    engine.moor("replay", "--verify")


def test_detaching_from_exec_it_leaves_the_exec_running(dk: DockerApi, image: str) -> None:
    """ctrl-p ctrl-q ends the attachment only: no ^D reaches the exec's terminal."""
    cid = cid_of(dk.docker("run", "-d", image, "sleep", "300"))
    with Terminal(dk, "exec", "-it", cid, "sh") as term:
        term.write(b"echo $$ > /tmp/sh.pid; echo rea''dy\r")
        term.expect(b"ready")
        term.write(b"\x10\x11")  # ctrl-p ctrl-q
        term.close()
    time.sleep(0.5)
    alive = dk.docker("exec", cid, "sh", "-c", "kill -0 $(cat /tmp/sh.pid) && echo alive",
                      check=False)
    assert alive.stdout == "alive\n", (alive.stdout, alive.stderr)
    dk.docker("rm", "-f", cid)
