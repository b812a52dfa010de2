"""Tie the children of `moor up` to its life: they stop when it dies, even by SIGKILL."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, sig: int = signal.SIGTERM) -> Callable[[], None]:
    """Return a preexec_fn that makes the child get `sig` when `parent` dies.

    PR_SET_PDEATHSIG is set in the child between fork and exec and survives the exec (not
    a fork: the worker's supervisors do not inherit it). If the parent died before the
    call, the child exits at once rather than run orphaned. libc is loaded here, in the
    parent, so the child does no importing between fork and exec.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            os._exit(1)
        if os.getppid() != parent:
            os._exit(1)
    return preexec
