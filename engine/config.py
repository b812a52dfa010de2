"""Configuration from MOOR_* environment variables, with defaults that work on one machine."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import re
from typing import TYPE_CHECKING

from engine.errors import InvalidParameter
from events.specs import NetworkSpec

if TYPE_CHECKING:
    from engine.core.admission import Policy

__all__ = [
    "DEFAULT_BRIDGE",
    "DEFAULT_SUBNET",
    "ENGINE_ID",
    "cgroup_parent",
    "data_root",
    "default_cgroup_parent",
    "default_network",
    "derive_engine_id",
    "engine_id",
    "host_capacity",
    "host_id",
    "host_labels",
    "host_lease_ms",
    "cluster_flag",
    "key_prefix",
    "load_policy",
    "queue_url",
    "shard_count",
    "shard_of_process",
    "metrics_addr",
    "metrics_fd",
    "named_redis_url",
    "validate_engine_id",
]

# Chosen to stay clear of Docker's local pools (172.17.0.0/16 to 172.31.0.0/16 and
# 192.168.0.0/16), of podman's defaults (10.88.0.0/16 and the 10.89.x.0/24 user networks)
# and of the usual Kubernetes ranges (10.42-43/16, 10.96.0.0/12, 10.244.0.0/16), so moorage
# can run beside any of them. A host route that overlaps it still wins: ensure_bridge
# refuses the subnet, and MOOR_SUBNET picks another.
DEFAULT_SUBNET = "10.77.0.0/16"
DEFAULT_BRIDGE = "moor0"
# `moor up` serves the metrics on a free loopback port unless MOOR_METRICS_ADDR says where.
DEFAULT_METRICS_ADDR = "127.0.0.1:0"
METRICS_FD = "MOOR_METRICS_FD"  # set by `moor up` for its reducer: the socket it bound


def default_network(shard: str | None = None, count: int | None = None) -> NetworkSpec:
    """Return the default bridge network from MOOR_SUBNET / MOOR_BRIDGE (unset or empty: ours).

    With several shards each shard's reducer allocates addresses on its own, so each gets
    its own equal slice of the subnet and its own bridge (`<bridge>s<shard>`): one writer
    per slice, and two shards' containers on one machine never share an address."""
    text = os.environ.get("MOOR_SUBNET") or DEFAULT_SUBNET
    try:
        subnet = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise InvalidParameter(f"invalid MOOR_SUBNET {text!r}: {exc}") from None
    bridge = os.environ.get("MOOR_BRIDGE") or DEFAULT_BRIDGE
    count = shard_count() if count is None else count
    shard = shard_of_process() if shard is None else shard
    if count > 1:
        bits = (count - 1).bit_length()
        if subnet.prefixlen + bits > 28:
            raise InvalidParameter(f"MOOR_SUBNET {text} is too small for {count} shards")
        subnet = list(subnet.subnets(prefixlen_diff=bits))[int(shard)]
        bridge = f"{bridge}s{shard}"[:15]
    # The gateway is the bridge's own address: the first host address of the subnet.
    return NetworkSpec(name="bridge", subnet=str(subnet), gateway=str(subnet.network_address + 1),
                       bridge=bridge)


def shard_count() -> int:
    """Return how many shards the deployment has (MOOR_SHARDS, default 1; fixed for life)."""
    text = os.environ.get("MOOR_SHARDS") or "1"
    if not text.isdigit() or not 1 <= int(text) <= 1024:
        raise InvalidParameter(f"invalid MOOR_SHARDS {text!r} (1 to 1024)")
    return int(text)


def shard_of_process(explicit: str | None = None) -> str:
    """Return the shard a reducer or worker serves: `explicit`, else MOOR_SHARD, else "0"."""
    text = explicit or os.environ.get("MOOR_SHARD") or "0"
    count = shard_count()
    if not text.isdigit() or int(text) >= count:
        raise InvalidParameter(f"invalid shard {text!r} (0 to {count - 1}: MOOR_SHARDS is "
                               f"{count})")
    return str(int(text))


def cluster_flag() -> bool | None:
    """Return what MOOR_CLUSTER says of the engine's Redis (1: a Redis Cluster, 0: not),
    None when it is unset (engine.cluster.on_cluster then finds out)."""
    flag = os.environ.get("MOOR_CLUSTER", "")
    return flag == "1" if flag in ("0", "1") else None


def queue_url() -> str | None:
    """Return the plain Redis for the rq queues (MOOR_QUEUE_URL), None: the engine's own.

    Required with Redis Cluster: rq's multi-key commands span hash slots, which a cluster
    refuses (docs/decisions/0015-scale-out.md)."""
    return os.environ.get("MOOR_QUEUE_URL") or None


def key_prefix() -> str:
    """Return the Redis key prefix (MOOR_PREFIX), so several engines can share a server."""
    return os.environ.get("MOOR_PREFIX", "moor:v1")


def data_root() -> str:
    """Return moorage's data directory: ``MOOR_DATA_ROOT``, else a per-user default."""
    explicit = os.environ.get("MOOR_DATA_ROOT")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/var/lib/moorage"
    xdg = os.environ.get("XDG_DATA_HOME")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.expanduser("~/.local/share")
    return os.path.join(base, "moorage")


# An engine id ends up in iptables chain names ("MOOR-POSTROUTING-<id>" within the
# kernel's 28 characters), netns names, link aliases and a cgroup directory: a short, safe
# set of characters keeps it valid in all of them.
ENGINE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,10}")


def validate_engine_id(value: str) -> str:
    """Return `value` if it can name an engine's host resources, else raise InvalidParameter."""
    if ENGINE_ID.fullmatch(value) is None:
        raise InvalidParameter(f"invalid engine id {value!r} (1-11 of [a-z0-9_-], starting "
                               "with a letter or digit)")
    return value


@functools.lru_cache(maxsize=16)
def derive_engine_id(root: str, prefix: str, shard: str = "0", host: str = "") -> str:
    """Return the engine id a data root and a journal (key prefix, shard) imply: 8 hex.

    Both go in: two `moor up` on one host differ by data root (each has its own embedded
    Redis, under the same default prefix), two engines on one Redis by prefix. The data
    root is resolved, so two spellings of one directory name one engine. A worker that
    joined as a host adds its host id, so two hosts on one machine never share a name
    even on one data root; without one the id is the single-host engine's, as before.
    """
    parts = (os.path.realpath(root), prefix, shard, *((host,) if host else ()))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def host_id() -> str:
    """Return the host id this worker joins as (MOOR_HOST_ID), "" for single-host mode."""
    from engine.core.hosts import validate_host_id

    value = os.environ.get("MOOR_HOST_ID") or ""
    return validate_host_id(value) if value else ""


def host_labels() -> dict[str, str]:
    """Return the host's labels from MOOR_HOST_LABELS ("k=v,k2=v2")."""
    labels = {}
    for item in (os.environ.get("MOOR_HOST_LABELS") or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise InvalidParameter(f"invalid host label {item!r} (expected KEY=VALUE)")
        labels[key] = value
    return labels


def host_capacity() -> int:
    """Return how many containers the host takes (MOOR_HOST_CAPACITY, default 100)."""
    text = os.environ.get("MOOR_HOST_CAPACITY") or "100"
    if not text.isdigit() or int(text) < 1:
        raise InvalidParameter(f"invalid MOOR_HOST_CAPACITY {text!r} (a positive integer)")
    return int(text)


def host_lease_ms() -> int:
    """Return the host's heartbeat lease (MOOR_HOST_LEASE_MS, default 10 s)."""
    text = os.environ.get("MOOR_HOST_LEASE_MS") or "10000"
    if not text.isdigit() or int(text) < 300:
        raise InvalidParameter(f"invalid MOOR_HOST_LEASE_MS {text!r} (at least 300)")
    return int(text)


def engine_id(root: str | None = None, prefix: str | None = None, shard: str | None = None,
              host: str | None = None) -> str:
    """Return an engine's identity on the host: MOOR_ENGINE_ID, else derived.

    Every host resource the worker creates carries it (netns names, link aliases, iptables
    chains and comments, the cgroup parent), so the reconciler of one engine can tell its
    own leftovers from another engine's live containers. Derived from this process's data
    root, key prefix, shard (MOOR_SHARD: a shard's worker, and the supervisors it forks)
    and host id (MOOR_HOST_ID: a host's worker), or from the ones given (a worker
    context's). Each shard's worker is an engine of its own on the machine.
    """
    if shard is None:
        shard = os.environ.get("MOOR_SHARD") or "0"
    explicit = os.environ.get("MOOR_ENGINE_ID")
    if explicit:
        validate_engine_id(explicit)
        if shard != "0":  # each shard's worker reconciles only its own: ids must differ
            return derive_engine_id(explicit, prefix if prefix is not None else key_prefix(),
                                    shard)
        return explicit
    return derive_engine_id(root if root is not None else data_root(),
                            prefix if prefix is not None else key_prefix(), shard,
                            host if host is not None else host_id())


def cgroup_parent() -> str:
    """Return the cgroup parent of the containers: MOOR_CGROUP_PARENT, else moorage/<engine id>.

    One shared top group keeps the host's hierarchy tidy (Docker's "docker" likewise); the
    engine's own level below it keeps two engines' containers apart.
    """
    return (os.environ.get("MOOR_CGROUP_PARENT") or default_cgroup_parent(engine_id())).strip("/")


def default_cgroup_parent(engine: str) -> str:
    """Return the cgroup parent an engine uses when MOOR_CGROUP_PARENT is unset."""
    return f"moorage/{engine}"


def named_redis_url(explicit: str | None = None) -> str | None:
    """Return the Redis the user named (--redis-url, else MOOR_REDIS_URL), or None for
    the embedded one. The one home of that rule; moor.embedded.resolve_redis_url adds
    the embedded fallback, and the CLI's fast path uses it without importing redis-py."""
    return explicit or os.environ.get("MOOR_REDIS_URL") or None


def load_policy(path: str | None = None) -> Policy:
    """Return the admission policy in `path`, else in MOOR_POLICY (JSON), else allow-all.

    The reducer loads it once at start and hands it to the decider (engine.core.admission
    documents the format); a file that does not parse stops the reducer rather than run
    it with a policy nobody wrote.
    """
    import msgspec

    from engine.core.admission import ALLOW_ALL, Policy

    path = path or os.environ.get("MOOR_POLICY") or None
    if path is None:
        return ALLOW_ALL
    try:
        with open(path, "rb") as fp:
            policy = msgspec.json.decode(fp.read(), type=Policy)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidParameter(f"admission policy {path}: {exc}") from None
    return ALLOW_ALL if policy.allows_all else policy  # the decider skips ALLOW_ALL


def metrics_addr(default: str | None = DEFAULT_METRICS_ADDR) -> tuple[str, int] | None:
    """Return where to serve /metrics: MOOR_METRICS_ADDR (HOST:PORT, port 0 for a free
    one; "off" for nowhere), else `default` (None: nowhere).

    `moor up` uses the loopback default; a reducer run on its own serves only when told.
    """
    text = os.environ.get("MOOR_METRICS_ADDR") or default
    if text is None or text.lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not sep or not 0 <= number <= 65535:
            raise ValueError(port)
    except ValueError:
        raise InvalidParameter(f"invalid MOOR_METRICS_ADDR {text!r} (expected IP:PORT, e.g. "
                               "127.0.0.1:9464, or off)") from None
    return host, number


def metrics_fd() -> int | None:
    """Return the listening socket `moor up` handed its reducer (MOOR_METRICS_FD), or None."""
    text = os.environ.get(METRICS_FD)
    return int(text) if text and text.isdigit() else None
