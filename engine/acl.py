"""Redis ACL users, one per role: which keys each may touch, and their credentials.

Redis ACLs see keys, not payloads, so the roles are told apart by the streams they may
append to (docs/decisions/0006-control-boundary.md):

- `reducer`: the single writer: every key of its shard (events, snapshot, done, replies,
  outbox, lease, the inboxes it reads and acknowledges) and rq's keys to enqueue jobs;
- `worker`: appends to the reports stream, reads the snapshot (and waits on a restore's
  results), and works its host's rq queue;
- `control` (and one user per extra principal): appends to its own commands stream, reads
  the journal, the snapshot and results, pops its replies; no rq key, no other stream;
- `admin`: everything (the embedded Redis's launcher, `moor import`, `moor acl`).

Rules use Redis 7 selectors ("(...)", each its own key patterns and commands) and
read-only key patterns ("%R~"): with Redis 6 a key pattern grants every command the user
has on it, so a control user allowed XADD could XADD to the events stream.

Credentials live in 0600 files `<data root>/credentials/<name>` (JSON: user, password),
made by `moor up` (embedded Redis) or `moor acl` (any Redis). A process uses its role's
file when its Redis URL carries no user; no file, no AUTH: a Redis without ACLs works as
before.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec

from engine.keys import CONTROL, Keys, check_principal

__all__ = ["ADMIN", "REDUCER", "ROLES", "WORKER", "Credential", "acl_rules", "connect_kwargs",
           "credential_file", "credentials_dir", "ensure_credential", "principals_with_files",
           "read_credential", "rq_keys", "user_line", "user_name"]

ADMIN, REDUCER, WORKER = "admin", "reducer", "worker"
ROLES = (ADMIN, REDUCER, WORKER, CONTROL)

# What rq 3.0 touches for one queue Q (its queue, registries, workers) and for its jobs
# (job, execution and result keys are named by job id, not by queue): found by MONITOR of
# a worker running, failing and cleaning jobs, and in rq's sources (registry.py, queue.py,
# executions.py, results.py, worker/). rq:group:* and rq:rl:* are left out (moorage uses
# neither groups nor rate limits). The worker's command channel is rq:pubsub:<name>.
_RQ_QUEUE = ("queue:{q}", "queue:{q}:intermediate", "wip:{q}", "finished:{q}", "failed:{q}",
             "deferred:{q}", "scheduled:{q}", "canceled:{q}", "ready:{q}",
             "clean_registries:{q}", "workers:{q}")
_RQ_SHARED = ("queues", "workers", "suspended", "groups", "clean_groups", "rl-keys",
              "job:*", "execution:*", "executions:*", "results:*", "worker:*")
_NO_KEYS = "+ping +echo +multi +exec +discard +client|setname"
_READ = "+xread +xrange +xrevrange +xlen +hget +hmget +hgetall +hlen +hkeys +hscan +exists +type"


class Credential(NamedTuple):
    """A Redis user and its password."""

    user: str
    password: str


def rq_keys(queue: str) -> list[str]:
    """Return the key patterns rq uses for one queue (see _RQ_QUEUE)."""
    return [f"rq:{k.format(q=queue)}" for k in (*_RQ_QUEUE, *_RQ_SHARED)]


def user_name(keys: Keys, name: str) -> str:
    """Return the Redis user of a role or principal for this engine's key prefix."""
    return f"{keys.prefix.replace(':', '-')}-{name}"


def acl_rules(keys: Keys, name: str, others: tuple[Keys, ...] = ()) -> str:
    """Return the ACL rules (after the user name and password) of a role or principal;
    `others`: the other shards of a sharded deployment, whose keys it may use alike."""
    every = (keys, *others)
    if name == ADMIN:
        return "~* &* +@all"
    # The default queue and every host's (Keys.host_queue: the default's name and -<host>).
    rq = " ".join(f"~{k}" for one in every
                  for k in (*rq_keys(one.queue), *rq_keys(one.host_queue("*"))))
    if name == REDUCER:
        shards = " ".join(f"~{one.prefix}:{{{one.tag}}}:*" for one in every)
        return f"resetchannels {shards} {rq} +@all -@dangerous +info"
    # Reads (the names index routes a sharded client), reply lists, and the marker a
    # client writes to WAIT on what it read (Keys.sync).
    reads = " ".join(f"({' '.join(f'%R~{k}' for k in _readable(one))} {_READ})"
                     for one in every)
    replies = " ".join(f"(~{one.prefix}:{{{one.tag}}}:reply:* +blpop) (~{one.sync()} +set)"
                       for one in every)
    if name == WORKER:
        own = " ".join(f"(~{one.reports} +xadd) (~{one.host_lease('*')} +set)"
                       for one in every)
        return f"resetchannels {rq} &rq:pubsub:* +@all -@dangerous +info {own} {reads} {replies}"
    streams = " ".join(f"(~{one.inbox(name).key} +xadd)" for one in every)  # validated there
    return f"resetchannels -@all {_NO_KEYS} {streams} {reads} {replies}"


def _readable(keys: Keys) -> tuple[str, ...]:
    return (keys.events, keys.containers, keys.versions, keys.world, keys.done, keys.names)


def user_line(keys: Keys, name: str, credential: Credential,
              others: tuple[Keys, ...] = ()) -> str:
    """Return the aclfile line of a role or principal (`ACL SETUSER` takes the same words
    after the name); the password only as its SHA-256."""
    import hashlib

    digest = hashlib.sha256(credential.password.encode()).hexdigest()
    return f"user {credential.user} on #{digest} {acl_rules(keys, name, others)}"


def credentials_dir(root: str) -> str:
    """Return the directory of the credential files under a data root."""
    return os.path.join(root, "credentials")


def credential_file(root: str, name: str) -> str:
    """Return the credential file of a role or principal if it exists, else ""."""
    path = os.path.join(credentials_dir(root), name)
    return path if os.path.exists(path) else ""


def read_credential(path: str) -> Credential:
    """Read a credential file (OSError, ValueError when unusable)."""
    with open(path, "rb") as fp:
        try:
            data = msgspec.json.decode(fp.read(), type=dict[str, str])
            return Credential(data["user"], data["password"])
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
            raise ValueError(f"{path}: not a credential file ({exc})") from None


def ensure_credential(root: str, keys: Keys, name: str) -> Credential:
    """Return the credential of a role or principal, creating its 0600 file if missing."""
    if name not in ROLES:
        check_principal(name)
    folder = credentials_dir(root)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    path = os.path.join(folder, name)
    if os.path.exists(path):
        return read_credential(path)
    import secrets

    credential = Credential(user_name(keys, name), secrets.token_hex(32))
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fp:
        fp.write(msgspec.json.encode(credential._asdict()) + b"\n")
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)
    return credential


def principals_with_files(root: str) -> list[str]:
    """Return the principals (not roles) that have a credential file."""
    try:
        names = os.listdir(credentials_dir(root))
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n not in ROLES and not n.endswith(".tmp"))


def connect_kwargs(url: str, root: str, name: str) -> dict[str, Any]:
    """Return redis-py's username/password for a role or principal: none when the URL
    carries a user or password of its own, or when there is no credential file."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return {}
    path = credential_file(root, name)
    if not path:
        return {}
    credential = read_credential(path)
    return {"username": credential.user, "password": credential.password}
