"""Docker's restart manager: whether an exit restarts the container, and after what back-off.

The back-off starts at 100 ms and doubles up to a minute; a run of 10 s or more resets
it. A cancelling signal (engine.core.lifecycle.cancels_restart) ends every policy; any
signal sent through the engine marks the container manually stopped, which only
unless-stopped heeds.
"""

from __future__ import annotations

from engine.core.state import Container
from events import model as e

__all__ = ["policy_restart", "restore_restarts"]

_BACKOFF_FIRST_MS = 100
_BACKOFF_MAX_MS = 60_000
_BACKOFF_RESET_NS = 10 * 1_000_000_000


def policy_restart(ctr: Container, exit_code: int, started_at: int,
                   finished_at: int) -> e.RestartScheduled | None:
    """Apply the restart policy to an exit (Docker's restart manager, §5): the restart, if any."""
    policy = ctr.host_config.restart_policy
    if policy.name in ("", "no") or ctr.restart_cancelled:
        return None
    if policy.name == "unless-stopped" and ctr.manually_stopped:
        return None
    if policy.name == "on-failure" and (exit_code == 0 or (
            policy.maximum_retry_count and ctr.restart_count >= policy.maximum_retry_count)):
        return None
    ran = finished_at - started_at
    if ctr.restart_delay_ms == 0 or ran >= _BACKOFF_RESET_NS:
        delay = _BACKOFF_FIRST_MS
    else:
        delay = min(ctr.restart_delay_ms * 2, _BACKOFF_MAX_MS)
    return e.RestartScheduled(generation=ctr.generation, delay_ms=delay,
                              restart_count=ctr.restart_count + 1,
                              due=finished_at + delay * 1_000_000)


def restore_restarts(ctr: Container, exit_code: int) -> tuple[bool, str]:
    """Return Docker's restore-time policy test (§5.1, §5.4) for a stopped container, and why.

    A fresh restart manager answers it: neither a cancelled manager nor the back-off
    counts, only the policy, the persisted exit code and restart count, whether the
    container was manually stopped (unless-stopped) and whether it ever started.
    """
    policy = ctr.host_config.restart_policy
    name = policy.name or "no"
    if ctr.started_at == 0:
        return False, "never started"  # Docker's HasBeenStartedBefore
    if name == "always":
        return True, "always"
    if name == "unless-stopped":
        if ctr.manually_stopped:
            return False, "unless-stopped, manually stopped"
        return True, "unless-stopped"
    if name == "on-failure":
        most = policy.maximum_retry_count
        if exit_code == 0:
            return False, "on-failure, exit code 0"
        if most and ctr.restart_count >= most:
            return False, f"on-failure:{most}, {ctr.restart_count} restarts already"
        return True, "on-failure"
    return False, f"restart policy {name}"
