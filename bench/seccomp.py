"""Seccomp costs at container start: compile (cold), cache hits, and loading in a child.

    python -m bench.seccomp [--runs N]

Prints medians over N runs of: compiling Docker's default profile with libseccomp (no
cache), `program_for` from the worker's memory, `program_for` from the disk cache (a new
worker process), `prepare`, and `install` in a forked child (root, or no_new_privs). The
cache directory is a private temporary one, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

from events import seccomp as sc
from events.caps import DEFAULT_MASK
from workers import nsutil
from workers.proc import seccomp as ws


def _ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times)


def _install_in_child(prepared: ws.Prepared) -> float:
    """Fork; time install in the child; return its milliseconds."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if os.geteuid() != 0:
                nsutil.set_no_new_privs()
            start = time.perf_counter_ns()
            ws.install(prepared)
            os.write(write_fd, str(time.perf_counter_ns() - start).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        elapsed = int(f.read() or -1)
    os.waitpid(pid, 0)
    return elapsed / 1e6


def main() -> None:
    """Measure and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args().runs
    cache = tempfile.mkdtemp(prefix="moor-bench-seccomp-")
    try:
        uname = os.uname()
        resolved = sc.resolve(sc.DEFAULT, DEFAULT_MASK, kernel=sc.kernel_release(uname.release),
                              arch=uname.machine)
        assert resolved is not None
        resolve = _ms(lambda: sc.resolve(sc.select_profile((), False) or sc.DEFAULT,
                                         DEFAULT_MASK, kernel=(6, 1)), runs)
        cold = _ms(lambda: ws.compile_program(resolved), runs)
        program = ws.program_for((), False, DEFAULT_MASK, cache)  # fills both caches
        assert program is not None
        memory = _ms(lambda: ws.program_for((), False, DEFAULT_MASK, cache), runs)

        def from_disk() -> None:
            ws._memory.clear()  # as a freshly started worker process
            ws.program_for((), False, DEFAULT_MASK, cache)

        disk = _ms(from_disk, runs)
        prepare = _ms(lambda: ws.prepare(program), runs)
        prepared = ws.prepare(program)
        install = statistics.median(_install_in_child(prepared) for _ in range(runs))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"libseccomp {ws.LIBSECCOMP_VERSION}, {len(program.bpf) // 8} BPF instructions, "
          f"medians of {runs} runs")
    for label, value in (("resolve the default profile (pure)", resolve),
                         ("compile, cold (libseccomp + stub)", cold),
                         ("program_for, memory hit", memory),
                         ("program_for, disk hit (new worker)", disk),
                         ("prepare (ctypes buffers)", prepare),
                         ("install in a forked child", install)):
        print(f"  {label:<38} {value:8.3f} ms")


if __name__ == "__main__":
    main()
