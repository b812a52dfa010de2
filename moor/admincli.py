"""Maintenance commands: `moor compact` and `moor acl`. Module level stays import-free.

`moor compact` asks for a compaction, itself a command, so the journal records who
compacted and when (`LogCompacted`); the reducer trims after recording it.

`moor acl` manages the Redis ACL users of the control boundary (engine.acl): `print`
writes the missing credential files and prints the ACL SETUSER lines that set the same
users up on an external Redis (the embedded one gets them from `moor up`); `add NAME`
creates a control principal with a commands stream of its own, its Redis user (applied
as admin on the engine's Redis) and its credential file, and registers it so the reducer
reads its stream.
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


def _acl_print(args: argparse.Namespace) -> int:
    import sys

    from engine.acl import ROLES, ensure_credential, principals_with_files, user_line
    from engine.config import data_root, key_prefix, shard_count
    from engine.keys import keys_for

    count = shard_count()  # a sharded deployment's users reach every shard's keys
    every = [keys_for(str(i), prefix=key_prefix(), count=count) for i in range(count)]
    root, keys, others = data_root(), every[0], tuple(every[1:])
    names = [*ROLES, *sorted({*principals_with_files(root), *args.principal})]
    for name in args.principal:
        _principal(name)
    print(f"moor acl: users for prefix {keys.prefix} (Redis 7+), passwords in {root}/"
          "credentials/<name> (0600), below only as SHA-256; pipe into redis-cli (ACL SAVE "
          "needs an aclfile)", file=sys.stderr)
    for name in names:
        words = user_line(keys, name, ensure_credential(root, keys, name), others).split()
        print("ACL SETUSER", words[1], "reset", *words[2:])
    print("ACL SETUSER default off")
    print("ACL SAVE")
    return 0


def _acl_add(args: argparse.Namespace) -> int:
    import redis

    from engine.acl import ensure_credential, user_line
    from engine.config import data_root
    from moor.connect import shard_stores

    _principal(args.name)
    stores = shard_stores(args.redis_url, role="admin")  # one store unless sharded
    r, keys = stores["0"]
    others = tuple(k for shard, (_, k) in sorted(stores.items()) if shard != "0")
    inbox = keys.inbox(args.name)
    credential = ensure_credential(data_root(), keys, args.name)
    words = user_line(keys, args.name, credential, others).split()
    saved = True
    for node in _acl_nodes(args.redis_url, r):  # a cluster's ACLs are per node
        node.execute_command("ACL", "SETUSER", words[1], "reset", *words[2:])
        try:
            node.execute_command("ACL", "SAVE")
        except redis.ResponseError:
            saved = False
    if not saved:
        print("moor acl: no aclfile: the user lasts until Redis restarts (add it to "
              "redis.conf, see `moor acl print`)")
    for shard_redis, shard_keys in stores.values():
        shard_redis.sadd(shard_keys.principals, args.name)
    print(f"principal {args.name}: Redis user {credential.user}, credential "
          f"{data_root()}/credentials/{args.name}, commands to {inbox.key} "
          f"(MOOR_PRINCIPAL={args.name} moor ...)")
    return 0


def _acl_nodes(redis_url: str | None, engine_redis: Any) -> list[Any]:
    """The servers a user must be set on: the engine's Redis, or every cluster node."""
    from moor.connect import on_cluster

    if not on_cluster(redis_url):
        return [engine_redis]
    import redis

    from engine.cluster import cluster_nodes
    from engine.config import named_redis_url

    kwargs = engine_redis.connection_pool.connection_kwargs
    auth = {k: kwargs[k] for k in ("username", "password") if kwargs.get(k)}
    return [redis.Redis(host=host, port=port, **auth)
            for host, port in cluster_nodes(named_redis_url(redis_url) or "", **auth)]


def _principal(name: str) -> None:
    """Refuse a principal name that cannot have a stream of its own (Docker's 400)."""
    from engine.errors import InvalidParameter
    from engine.keys import check_principal

    try:
        check_principal(name)
    except ValueError as exc:
        raise InvalidParameter(str(exc)) from None


def register(sub: Any) -> None:
    """Add `compact` and `acl` to `moor`'s parser."""
    p = sub.add_parser("compact", help="forget settled commands older than the retention")
    p.add_argument("--retain", default=None,
                   help="retention window, e.g. 24h (default MOOR_DEDUPE_RETENTION, else 24h; "
                        "at least 1m)")
    p.set_defaults(func=guard(_compact))

    p = sub.add_parser("acl", help="Redis ACL users of the control boundary")
    acl = p.add_subparsers(dest="acl_command", required=True, metavar="ACTION")
    q = acl.add_parser("print", help="write missing credentials; print ACL SETUSER lines "
                                     "for an external Redis")
    q.add_argument("--principal", action="append", default=[], metavar="NAME",
                   help="also a control principal of that name")
    q.set_defaults(func=guard(_acl_print))
    q = acl.add_parser("add", help="add a control principal with a commands stream of its own")
    q.add_argument("name", metavar="NAME")
    q.set_defaults(func=guard(_acl_add))
