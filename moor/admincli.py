"""`moor compact`: forget settled commands and their dedupe marks past the retention window.

The compaction is itself a command, so the journal records who compacted and when
(`LogCompacted`); the reducer trims after recording it. Module level stays import-free.
"""

from __future__ import annotations

import argparse
from typing import Any

from moor.failures import guard

__all__ = ["register"]


def _compact(args: argparse.Namespace) -> int:
    import time

    from commands import schema as c
    from commands.options import parse_duration_ns
    from engine.compact import retention_ms
    from moor.connect import client_for
    from projections.views.points import rfc3339_millis

    retain_ms = parse_duration_ns(args.retain) // 1_000_000 if args.retain else retention_ms()
    client = client_for(args.redis_url, actor=args.actor, reason=args.reason,
                        timeout=args.timeout)
    client.submit(c.CompactLog(retain_ms=retain_ms))
    settled = rfc3339_millis(time.time_ns() - retain_ms * 1_000_000)
    print(f"compacting commands settled before {settled} (retention {retain_ms // 1000}s); "
          "the journal is kept whole")
    return 0


def register(sub: Any) -> None:
    """Add `compact` to `moor`'s parser."""
    p = sub.add_parser("compact", help="forget settled commands older than the retention")
    p.add_argument("--retain", default=None,
                   help="retention window, e.g. 24h (default MOOR_DEDUPE_RETENTION, else 24h; "
                        "at least 1m)")
    p.set_defaults(func=guard(_compact))
