"""`moor acl add` on a Redis Cluster: a principal's user on every node (ACLs are per node),
and its stream registered with every shard."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import redis

from engine.acl import user_name
from engine.cluster import shard_redis
from engine.keys import keys_for
from tests.cluster import LocalCluster

REPO = str(Path(__file__).resolve().parents[2])


def test_acl_add_sets_the_user_on_every_node_and_registers_every_shard(
        redis_cluster: LocalCluster) -> None:
    prefix = f"mooracl:{uuid.uuid4().hex[:8]}"
    every = [keys_for(str(i), prefix=prefix, count=3) for i in range(3)]
    user = user_name(every[0], "alice")
    with tempfile.TemporaryDirectory(prefix="moor-acl-") as root:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOOR_")}
        env.update(MOOR_REDIS_URL=redis_cluster.url, MOOR_SHARDS="3", MOOR_PREFIX=prefix,
                   MOOR_DATA_ROOT=root)
        done = subprocess.run([sys.executable, "-m", "moor.cli", "acl", "add", "alice"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert Path(root, "credentials", "alice").exists()
    nodes = redis_cluster.live()
    assert len(nodes) == 6
    try:
        for node in nodes:
            lines = [line.decode() for line in node.client().execute_command("ACL", "LIST")]
            mine = [line for line in lines if line.split()[1] == user]
            assert len(mine) == 1, f"no user {user} on {node.address}"
            for keys in every:  # its own commands stream on every shard
                assert f"~{keys.inbox('alice').key}" in mine[0], (node.address, keys.tag)
        for keys in every:
            shard = shard_redis(redis_cluster.url, keys.tag)
            assert shard.sismember(keys.principals, "alice")
            shard.delete(keys.principals)
            shard.close()
    finally:
        for node in nodes:
            try:
                node.client().execute_command("ACL", "DELUSER", user)
            except redis.RedisError:
                pass
