"""`moor compact`: forget settled commands and their dedupe marks past the retention window.

The compaction is itself a command, so the journal records who compacted and when
(`LogCompacted`); the reducer trims after recording it. Module level stays import-free.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from moor.failures import guard

__all__ = ["DEFAULT_RETENTION", "register"]

DEFAULT_RETENTION = os.environ.get("MOOR_DEDUPE_RETENTION", "24h")


def _compact(args: argparse.Namespace) -> int:
    import time

    from commands import schema as c
    from engine.errors import InvalidParameter
    from moor.connect import client_for
    from projections.views.points import parse_time, rfc3339_millis

    now = time.time_ns()
    if not args.retain[-1:].isalpha():
        raise InvalidParameter(f"invalid retention {args.retain!r}: use a duration like 24h")
    retain_ms = (now - parse_time(args.retain, now)) // 1_000_000
    client = client_for(args.redis_url, actor=args.actor, reason=args.reason,
                        timeout=args.timeout)
    client.submit(c.CompactLog(retain_ms=retain_ms))
    print(f"compacting commands settled before {rfc3339_millis(now - retain_ms * 1_000_000)} "
          f"(retention {args.retain}); the journal is kept whole")
    return 0


def register(sub: Any) -> None:
    """Add `compact` to `moor`'s parser."""
    p = sub.add_parser("compact", help="forget settled commands older than the retention")
    p.add_argument("--retain", default=DEFAULT_RETENTION,
                   help="retention window, e.g. 24h (MOOR_DEDUPE_RETENTION; at least 1m)")
    p.set_defaults(func=guard(_compact))
