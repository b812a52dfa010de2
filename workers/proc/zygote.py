"""Fork supervisors from a small pre-started process (the zygote), not from the worker.

A supervisor forked from the rq worker keeps the worker's whole address space (redis-py,
rq, the engine's schemas: ~49 MB RSS) and, as Python's reference counts write to what it
touches, copies ~8.6 MB of it per container. The zygote is a fresh interpreter, started
with ``-S`` (no site, no .pth hooks), that imports what a supervisor and the container's
init use at run time (``workers.proc.supervisor`` and its closure, ``engine.resp`` for the
exit report; no redis-py, rq, threading, logging, random or subprocess, whose at-fork
hooks would run in every fork), runs once the code a supervisor runs (``_warm_up``),
freezes its objects out of the cyclic GC and then only forks, one supervisor per request.
What a supervisor still costs is the pages it writes first: see docs/decisions/0016::

    worker (subreaper) --Popen--> zygote `moor-zygote <engine id>`
                                    `--fork--> B `moor-supervisor <id>` --fork--> C

B is the zygote's child and the zygote reaps it. Everything else about B is as before
(``workers.proc.supervisor``): its own session, stdio, signals, cgroup, report.

The worker's side: ``start`` (``moor worker`` calls it) launches the zygote for the
worker's engine id; ``fork_supervisor`` (``workers.proc.spawn``) sends it the
``ProcessSpec`` and ``InitPlan`` (msgpack) with B's status pipe and the netns fd
(SCM_RIGHTS) over a socketpair and gets B's pid back; B decodes them. A process that
never called ``start`` (tests, tools) forks its supervisors itself, as before; so does
the worker, with a warning in its log, while its zygote cannot be started (retried after
``RETRY_AFTER``), refuses a request or is found dead at the send (after one replacement).
``MOOR_SUPERVISOR_FORK=worker`` turns the zygote off.

Lifetime: the zygote belongs to one worker process and one engine id. It exits when the
worker closes the socket or dies (PR_SET_PDEATHSIG, SIGKILL), and refuses to start for an
engine id its environment does not give. A zygote found dead is reaped and started again
after the worker's next job (``process.reap_children`` calls ``check``) or at the next
spawn; the supervisors it had forked are then the worker's children (it is their
subreaper), which adopts them for ``process.reap_children``. A spawn whose request was
lost with a dying zygote is not retried: B may exist, and its reply on the status pipe
decides, as for a direct fork.

Environment: supervisors keep the worker's environment (operators and the test suite find
an engine's processes by ``MOOR_PREFIX`` in /proc/PID/environ), but the zygote is not a
supervisor: in its own /proc/PID/environ that variable reads ``MOOR_ZYGOTE`` (the same
bytes renamed in place) and each child names it back after the fork.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

import _signal

__all__ = ["RETRY_AFTER", "Zygote", "ZygoteError", "ZygoteLost", "check", "current",
           "fork_supervisor", "start", "stop"]

RETRY_AFTER = 30.0  # seconds the worker forks supervisors itself after a failed start
START_TIMEOUT = 20.0  # seconds for the zygote to import and say it is ready
REPLY_TIMEOUT = 10.0  # seconds for the pid of a forked supervisor
DISABLE = "MOOR_SUPERVISOR_FORK"  # "worker": fork supervisors in the worker, no zygote
_PREFIX, _HIDDEN = b"MOOR_PREFIX=", b"MOOR_ZYGOTE="  # same length: renamed in place
_REQUEST = struct.Struct("=I")  # the payload's length; SCM_RIGHTS: status_w [, netns_fd]
_REPLY = struct.Struct("=iI")  # pid (0: failed), then that many bytes of error text
_MAX_REQUEST = 64 << 20
_SIGCHLD, _SIG_DFL = int(signal.SIGCHLD), int(signal.SIG_DFL)
# The zygote's program: -S leaves sys.path without site-packages and the editable
# install's hook, so the worker hands its own search path over (argv[4:]).
_BOOT = ("import sys; sys.path[:0] = sys.argv[4:]; "
         "from workers.proc.zygote import main; main()")


_decoder: Any = None


def _decode(payload: bytes) -> tuple[Any, Any]:
    """Decode a request's (ProcessSpec, InitPlan) from msgpack.

    msgpack with a typed decoder rather than pickle: in a fresh fork, unpickling touched
    (and so copied) ~0.3 MB more of the zygote's pages than this decoder, built and used
    once in the zygote before its first fork.
    """
    global _decoder
    if _decoder is None:
        import msgspec

        from workers.proc.init import InitPlan
        from workers.proc.spec import ProcessSpec

        _decoder = msgspec.msgpack.Decoder(tuple[ProcessSpec, InitPlan])
    return _decoder.decode(payload)  # type: ignore[no-any-return]


def _encode(spec: Any, plan: Any) -> bytes:
    """Encode a request; ZygoteError if it would not come back the same."""
    import msgspec

    payload = msgspec.msgpack.encode((spec, plan))
    try:
        same = _decode(payload) == (spec, plan)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ZygoteError(f"spawn request does not decode: {e}") from None
    if not same:
        raise ZygoteError("spawn request does not survive msgpack")
    return payload


class ZygoteError(Exception):
    """The zygote cannot take this request, which it never received: fork elsewhere."""


class ZygoteLost(Exception):
    """The zygote died or hung after receiving the request: a supervisor may exist."""


# --- the worker's side ---------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes] | None:
    """Return /proc/PID/stat's fields from the state on (zombies included), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2:].split()


def _search_path() -> list[str]:
    """Where the zygote finds moorage and its dependencies: this interpreter's path."""
    import workers

    here = os.path.dirname(os.path.dirname(os.path.abspath(workers.__file__)))
    found = [here]
    for entry in sys.path:
        if entry and os.path.isabs(entry) and os.path.isdir(entry) and entry not in found:
            found.append(entry)
    return found


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("zygote closed the connection")
        data += chunk
    return bytes(data)


class Zygote:
    """The worker's handle on one running zygote."""

    def __init__(self, engine: str, proc: Any, sock: socket.socket) -> None:
        self.engine = engine
        self.proc = proc  # subprocess.Popen
        self.pid: int = proc.pid
        self._sock = sock
        self._children: dict[int, bytes] = {}  # supervisor pid -> start ticks
        self._prune_at = 64
        self.closed = False

    @classmethod
    def launch(cls, engine: str) -> Zygote:
        """Start a zygote for `engine` and wait until it is ready; ZygoteError if not."""
        import subprocess

        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = [sys.executable, "-S", "-c", _BOOT, str(theirs.fileno()), engine,
                    str(os.getpid()), *_search_path()]
            proc = subprocess.Popen(argv, pass_fds=(theirs.fileno(),),
                                    stdin=subprocess.DEVNULL, cwd="/",
                                    start_new_session=True)
        except OSError as e:
            mine.close()
            raise ZygoteError(f"cannot start the supervisor zygote: {e}") from e
        finally:
            theirs.close()
        zygote = cls(engine, proc, mine)
        try:
            mine.settimeout(START_TIMEOUT)
            pid, text = zygote._reply()
            if pid != proc.pid:
                raise ZygoteError(f"the supervisor zygote failed to start: {text}")
        except (OSError, EOFError, ZygoteError) as e:
            zygote.close(kill=True)
            code = proc.returncode
            raise ZygoteError(f"the supervisor zygote did not start ({e}; exit status "
                              f"{code})") from None
        return zygote

    def _reply(self) -> tuple[int, str]:
        pid, size = _REPLY.unpack(_recv_exact(self._sock, _REPLY.size))
        return pid, _recv_exact(self._sock, size).decode(errors="replace") if size else ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def fork(self, spec: Any, plan: Any, netns_fd: int, status_w: int) -> int:
        """Have the zygote fork B with these fds; return B's pid.

        ZygoteError: nothing reached the zygote (fork elsewhere); ZygoteLost: it died or
        hung after the request (B may run; its status pipe tells).
        """
        payload = _encode(spec, plan)
        if len(payload) > _MAX_REQUEST:
            raise ZygoteError(f"spawn request too large for the zygote ({len(payload)} bytes)")
        fds = [status_w] if netns_fd < 0 else [status_w, netns_fd]
        data = _REQUEST.pack(len(payload)) + payload
        self._sock.settimeout(REPLY_TIMEOUT)
        try:
            sent = socket.send_fds(self._sock, [data], fds)
        except OSError as e:  # EPIPE, ECONNRESET: it is gone and got nothing
            self.close(kill=True)
            raise ZygoteError(f"supervisor zygote {self.pid} is gone: {e}") from e
        try:
            if sent < len(data):
                self._sock.sendall(data[sent:])
            pid, text = self._reply()
        except (OSError, EOFError) as e:
            self.close(kill=True)
            raise ZygoteLost(f"supervisor zygote {self.pid} failed after the request: "
                             f"{e!r}") from e
        if pid <= 0:
            raise ZygoteError(f"supervisor zygote {self.pid}: {text}")
        fields = _stat_fields(pid)
        if fields is not None:
            self._children[pid] = fields[19]
        if len(self._children) >= self._prune_at:
            self._prune()
        return pid

    def _prune(self) -> None:
        """Forget supervisors the zygote has reaped (amortized: the list doubles first)."""
        for pid, ticks in list(self._children.items()):
            fields = _stat_fields(pid)
            if fields is None or fields[19] != ticks:
                del self._children[pid]
        self._prune_at = max(64, 2 * len(self._children))

    def close(self, kill: bool = False) -> None:
        """Stop this zygote (EOF; SIGKILL by PID with kill) and adopt its supervisors.

        Its supervisors, running or exited, are the worker's children from the moment it
        died (the worker is their subreaper): ``process.reap_children`` reaps them.
        """
        from workers.proc import process

        if self.closed:
            return
        self.closed = True
        self._sock.close()
        if kill and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: never hang a worker
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()
        me = str(os.getpid()).encode()
        for pid, ticks in self._children.items():
            fields = _stat_fields(pid)
            if fields is not None and fields[19] == ticks and fields[1] == me:
                process.track_child(pid)
        self._children.clear()


_current: Zygote | None = None
_wanted = False  # start() was called: this process forks its supervisors in a zygote
_failed_at = -1e9  # monotonic time of the last failed start


def _log() -> Any:
    import logging

    return logging.getLogger("moorage.worker")


def _disabled() -> bool:
    return os.environ.get(DISABLE, "").lower() == "worker"


def _ensure() -> Zygote | None:
    """Return a live zygote for this process's engine id, starting one if needed."""
    global _current, _failed_at
    from engine.config import engine_id

    engine = engine_id()
    if _current is not None and (_current.closed or not _current.alive()
                                 or _current.engine != engine):
        old, _current = _current, None
        if not old.closed and not old.alive():
            _log().warning("supervisor zygote %d died (status %s); starting another",
                           old.pid, old.proc.returncode)
        old.close()  # (alive: another engine id now, whose cgroup parent differs)
    if _current is None:
        if time.monotonic() - _failed_at < RETRY_AFTER:
            return None
        try:
            _current = Zygote.launch(engine)
        except ZygoteError as e:
            _failed_at = time.monotonic()
            _log().warning("%s; supervisors are forked from the worker for the next %.0fs",
                           e, RETRY_AFTER)
            return None
    return _current


def check() -> None:
    """Reap a dead zygote, adopt its supervisors and start another (after each job)."""
    if _wanted and _current is not None and (_current.closed or not _current.alive()):
        _ensure()


def start() -> Zygote | None:
    """Start this worker's zygote (None: it could not start; supervisors fork here).

    Called once by ``moor worker`` (``workers.service.serve``); from then on every
    ``spawn`` in this process goes through a zygote for the current engine id, which is
    stopped when the process exits.
    """
    global _wanted
    if _disabled():
        return None
    if not _wanted:
        import atexit

        atexit.register(stop)
    _wanted = True
    return _ensure()


def stop() -> None:
    """Stop this process's zygote (its supervisors keep running)."""
    global _current, _wanted
    _wanted = False
    if _current is not None:
        old, _current = _current, None
        old.close()


def current() -> Zygote | None:
    """Return this process's zygote, if it runs one."""
    return _current


def fork_supervisor(spec: Any, plan: Any, netns_fd: int, status_w: int) -> int | None:
    """Fork B in this process's zygote; None when there is none (fork B here).

    Raises ZygoteLost when the request may have been carried out (see ``Zygote.fork``).
    """
    if not _wanted:
        return None
    for _ in range(2):  # a zygote found dead at the send is replaced once
        zygote = _ensure()
        if zygote is None:
            return None
        try:
            return zygote.fork(spec, plan, netns_fd, status_w)
        except ZygoteError as e:
            _log().warning("%s", e)
            if not zygote.closed:
                break  # it refused this request: another try would be the same
    _log().warning("forking this supervisor from the worker")
    return None


# --- the zygote's side -------------------------------------------------------------------


_hidden_at = -1  # where the zygote renamed _PREFIX: its forks name it back there
_supervisor: Any = None  # workers.proc.supervisor, once the zygote has loaded it


def _hide_prefix() -> None:
    """Rename MOOR_PREFIX to MOOR_ZYGOTE in this process's /proc/PID/environ, in place."""
    global _hidden_at
    from workers.proc.title import memory_bounds

    try:
        start, end = memory_bounds()[2:]
        fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            block = os.pread(fd, end - start, start)
            at = 0 if block.startswith(_PREFIX) else block.find(b"\0" + _PREFIX) + 1
            if at > 0 or block.startswith(_PREFIX):
                os.pwrite(fd, _HIDDEN, start + at)
                _hidden_at = start + at
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        pass  # cosmetic: only what ps and the leak checks see


def _unhide_prefix() -> None:
    """Name MOOR_PREFIX back in a fork (a few C calls: see _child)."""
    if _hidden_at >= 0:
        fd = os.open("/proc/self/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            os.pwrite(fd, _PREFIX, _hidden_at)
        finally:
            os.close(fd)


def _child(payload: bytes, netns_fd: int, status_w: int) -> None:
    """Become B; never returns.

    Every page of the zygote that B writes first (CPython writes reference counts on
    whatever it touches) becomes B's own copy, so B starts with C calls on values the
    zygote prepared. The request is decoded here, not in the zygote: what the zygote
    writes between two forks would become a private copy in every earlier supervisor.
    """
    try:
        _signal.set_wakeup_fd(-1)  # the zygote's wake-up pipe is not ours
        _signal.signal(_SIGCHLD, _SIG_DFL)
        _unhide_prefix()
        os.setsid()
        supervisor = _supervisor  # set by main: an import statement here touches importlib
        try:
            spec, plan = _decode(payload)
        except Exception as e:  # noqa: BLE001 - the caller must hear why
            supervisor.tell_failure(status_w, 128, f"bad spawn request: {e!r}")
            return
        del payload
        supervisor.supervise(spec, plan, netns_fd, status_w)
    except BaseException as e:  # noqa: B036 - nothing may unwind into the zygote's loop
        os.write(2, f"moorage supervisor failed: {e!r}\n".encode(errors="replace"))
    finally:
        os._exit(0)


def _answer(sock: socket.socket, pid: int, text: str = "") -> None:
    data = text.encode(errors="replace")[:4000]
    sock.sendall(_REPLY.pack(pid, len(data)) + data)


def _serve_one(sock: socket.socket) -> bool:
    """Take one request and fork its supervisor; False at the worker's EOF."""
    head, fds, _, _ = socket.recv_fds(sock, _REQUEST.size, 2)
    try:
        if not head:
            return False
        try:
            if len(head) < _REQUEST.size:
                head += _recv_exact(sock, _REQUEST.size - len(head))
            (size,) = _REQUEST.unpack(head)
            payload = _recv_exact(sock, size)
        except EOFError:
            return False
        if not fds:
            _answer(sock, 0, "no status pipe came with the request")
            return True
        status_w, netns_fd = fds[0], fds[1] if len(fds) > 1 else -1
        try:
            pid = os.fork()
        except OSError as e:  # EAGAIN, ENOMEM: the worker forks this one itself
            _answer(sock, 0, f"fork: {e}")
            return True
        if pid == 0:
            _child(payload, netns_fd, status_w)
        _answer(sock, pid)
        return True
    finally:
        for fd in fds:
            os.close(fd)


_WARM_ROUNDS = 10  # CPython 3.11 specializes a code object after 8 calls


def _warm_up() -> None:
    """Run here, before the first fork, the code each supervisor runs while it starts
    and while its process runs, in a scratch directory and on its own pipes.

    CPython's first runs of a function rewrite its bytecode in place (specialization)
    and fill lazy caches (msgspec's encoders, the type method cache): done once here,
    those writes stay shared instead of being copied into every supervisor.
    """
    import shutil

    from commands.codec import CODEC
    from events.runs import SpawnResult
    from workers.proc import init, process, stopper, supervisor
    from workers.proc.hub import Hub, stdio_for
    from workers.proc.logs import JsonFileWriter
    from workers.proc.spec import ProcessSpec

    scratch = f"/tmp/moor-zygote-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(scratch, 0o700)
    try:
        spec = ProcessSpec(container_id="0" * 64, rootfs=scratch, argv=("true",),
                           state_dir=scratch, log_path=os.path.join(scratch, "log"),
                           open_stdin=True, attach_socket=os.path.join(scratch, "a.sock"))
        plan = init.InitPlan(container_id=spec.container_id, rootfs=scratch, argv=spec.argv,
                             env={"PATH": init.DEFAULT_PATH}, user=init.User(0, 0, (0,), "/"),
                             working_dir="/", hostname="", binds=())
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        pidfd = os.pidfd_open(os.getpid())
        try:
            for _ in range(_WARM_ROUNDS):
                _encode(spec, plan)
                writer = JsonFileWriter(spec.log_path)
                io = stdio_for(spec)
                writer.feed("stdout", b"warm\n")
                me = os.getpid()
                process.write_pid_file(os.path.join(scratch, process.SUPERVISOR_PID_FILE),
                                       process.ProcRef(me, process.start_ticks(me) or 0))
                process.write_pid_file(os.path.join(scratch, process.PID_FILE),
                                       process.ProcRef(me, 0, time.time_ns()))
                CODEC.json(SpawnResult(pid=me, supervisor_pid=me, started_at_ns=1))
                hub = Hub.for_spec(spec, io.stdin_w, -1)
                hub.interest()
                escalation = stopper.Escalation(scratch, 1, wake_r)
                escalation.timeout_ms()
                escalation.fire_if_due(pidfd)
                poller = select.poll()
                poller.register(wake_r, select.POLLIN)
                poller.poll(0)
                supervisor.STDIO_GRACE  # noqa: B018
                hub.close()
                writer.close()
                for fd in (*io.child, *io.outputs):
                    if fd >= 0:
                        os.close(fd)
        finally:
            for fd in (wake_r, wake_w, pidfd):
                os.close(fd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _noop(signum: int, frame: Any) -> None:
    """The wake-up fd has told the loop already."""


def main() -> None:
    """Be the zygote: argv is fd, engine id, the worker's pid (then the search path)."""
    fd, eid, worker = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    sock = socket.socket(fileno=fd)
    try:
        from workers import nsutil

        nsutil.set_pdeathsig(signal.SIGKILL)  # the worker's death ends us; not our children
        if os.getppid() != worker:
            return  # it died before we could tie ourselves to it
        # What B and C use at run time, loaded once here and shared by every fork.
        from engine import acl, resp, seeds  # noqa: F401 - the exit report's needs
        from engine.config import engine_id
        from workers.proc import supervisor, title

        global _supervisor
        _supervisor = supervisor
        title.use_own_writer()  # not setproctitle: see workers.proc.title
        mine = engine_id()
        if mine != eid:
            _answer(sock, 0, f"its environment gives engine id {mine}, not {eid}")
            return
        title.set_title(f"moor-zygote {eid}")
        try:
            _warm_up()
        except OSError as e:  # only memory is at stake: serve all the same
            os.write(2, f"moor-zygote: warm-up failed: {e}\n".encode(errors="replace"))
        _hide_prefix()
        os.chdir("/")
        os.umask(0o022)
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _noop)
        gc.collect()
        gc.freeze()  # the forks never scan (and so never copy) what is loaded by now
        _answer(sock, os.getpid())
    except Exception as e:  # noqa: BLE001 - the worker hears why and forks itself
        try:
            _answer(sock, 0, f"zygote: {e!r}")
        except OSError:
            pass
        raise
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        for ready, _ in poller.poll():
            if ready == wake_r:
                try:
                    while os.read(wake_r, 256):
                        pass
                except BlockingIOError:
                    pass
            elif not _serve_one(sock):
                return
        _reap()


if __name__ == "__main__":
    main()
