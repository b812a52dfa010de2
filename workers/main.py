"""`moor worker`: this host's rq worker (no fork per job), with the host context set.

Run as `python -m workers.main` (the CLI execs it: nothing outside workers/ imports it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import redis
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from engine.config import data_root, key_prefix
from engine.keys import keys_for
from workers import nsutil
from workers.context import HostContext, configure
from workers.reconcile import reconcile

__all__ = ["main", "make_worker"]

log = logging.getLogger("moorage.worker")


def make_worker(context: HostContext, name: str | None = None) -> SimpleWorker:
    """Configure the job context and return an rq worker on this host's queue."""
    configure(context)
    return SimpleWorker([context.keys.queue], connection=context.redis,
                        serializer=JSONSerializer, name=name,
                        log_job_description=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moor worker")
    parser.add_argument("--redis-url")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--no-reconcile", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    url = args.redis_url or os.environ.get("MOOR_REDIS_URL")
    if not url:
        from engine.redis_embedded import redis_url

        url = redis_url()
    if os.geteuid() != 0:
        print("moor worker needs root (mounts, namespaces, links)", file=sys.stderr)
        return 1
    # Supervisors are re-parented to us rather than to a slow-reaping PID 1.
    nsutil.set_child_subreaper(True)
    context = HostContext(redis=redis.Redis.from_url(url), redis_url=url,
                          keys=keys_for(prefix=key_prefix()), root=data_root())
    os.makedirs(context.root, exist_ok=True)
    worker = make_worker(context)
    level = os.environ.get("MOOR_LOG_LEVEL", "WARNING")
    if args.burst or args.no_reconcile:
        if not args.no_reconcile:
            reconcile(context)
        worker.work(burst=args.burst, logging_level=level, with_scheduler=False)
        return 0
    # Reconcile at start, then whenever the queue has been idle for a while: between
    # jobs, in this thread, so it never races a start or a teardown.
    interval = int(os.environ.get("MOOR_RECONCILE_INTERVAL", "60"))
    while True:
        reconcile(context)
        worker.work(burst=False, logging_level=level, with_scheduler=False,
                    max_idle_time=interval)
        if getattr(worker, "_shutdown_requested_date", None) is not None:
            return 0  # SIGTERM/SIGINT: rq finished the job in hand and stopped


if __name__ == "__main__":
    sys.exit(main())
