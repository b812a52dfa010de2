"""`moor worker`: run this host's worker (root); `python -m moor.worker` does the same."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from moor.embedded import resolve_redis_url

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moor worker")
    parser.add_argument("--redis-url")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--no-reconcile", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    url = resolve_redis_url(args.redis_url)
    if os.geteuid() != 0:
        print("moor worker needs root (mounts, namespaces, links)", file=sys.stderr)
        return 1
    from workers.service import serve

    return serve(url, burst=args.burst, reconcile_first=not args.no_reconcile)


if __name__ == "__main__":
    sys.exit(main())
