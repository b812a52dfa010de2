"""The host side of `docker update`: a running container's live cgroup takes new limits.

The reducer decided and recorded the new HostConfig (`ContainerUpdated`); this job writes
the container's current one (the snapshot, so a late job of an older update never undoes
a newer one) to the groups of the run it was decided for, the way its start wrote them.
A limit the kernel refuses (memory below what the group uses: runc's text) is reported as
a `ReportDrift`, so the journal says the live cgroup did not take it.
"""

from __future__ import annotations

import logging

from commands import schema as c
from workers.context import HostContext
from workers.proc import cgroups
from workers.proc.spec import limits_for

__all__ = ["update_limits"]

log = logging.getLogger("moorage.worker")


def update_limits(ctx: HostContext, cid: str, generation: int, version: int = 0) -> None:
    """Write the limits to the run's groups; a run that has ended keeps them for its next."""
    ctr = ctx.container(cid)
    if ctr is None or ctr.generation != generation or not ctr.running:
        log.info("update of %s gen %s is no longer current; skipped", cid[:12], generation)
        return
    try:
        cgroups.ensure_cgroup(cid, limits=limits_for(ctr.host_config))
    except (OSError, ValueError) as e:
        detail = f"Cannot update container {cid}: {getattr(e, 'strerror', None) or e}"
        log.warning("%s", detail)
        ctx.report(cid, c.ReportDrift(resource="cgroup", detail=detail, generation=generation),
                   f"update-failed-{cid}-{version}")
