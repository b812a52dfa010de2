"""The nodes a Redis URL names, and where a MOVED answer sends a client (pure, no redis-py).

A Redis Cluster is named by its seeds: `redis://[user:pass@]h1:p1,h2:p2/0`. The engine's
cluster client (engine.cluster) and the supervisors' exit reports (workers.proc.supervisor,
which must not load redis-py: docs/decisions/0016-density.md) read them here alike.
"""

from __future__ import annotations

__all__ = ["moved_url", "seed_urls", "seeds_of"]


def seed_urls(url: str) -> list[str]:
    """Return one URL per node a URL names: redis://h1:p1,h2:p2/0 (a Redis Cluster's
    seeds) gives two, each with the scheme, credentials and database; any other URL itself."""
    scheme, sep, rest = url.partition("://")
    if not sep or "," not in rest:
        return [url]
    auth, at, hosts = rest.rpartition("@")
    hosts, slash, tail = hosts.partition("/")
    return [f"{scheme}://{auth}{at}{node}{slash}{tail}" for node in hosts.split(",")]


def seeds_of(url: str) -> list[tuple[str, int]]:
    """Return the (host, port) of every node a URL names."""
    found = []
    for one in seed_urls(url):
        hosts = one.partition("://")[2].rpartition("@")[2].partition("/")[0]
        host, _, port = hosts.rpartition(":")
        found.append((host.strip("[]") or "127.0.0.1", int(port or 6379)))
    return found


def moved_url(url: str, message: str) -> str | None:
    """Return the URL of the node a MOVED answer names ("MOVED 866 10.0.0.2:7001"), with
    the scheme, credentials and database of `url`; None for any other answer."""
    words = message.split()
    if len(words) < 3 or words[0] != "MOVED":
        return None
    scheme, _, rest = url.partition("://")
    auth, at, hosts = rest.rpartition("@")
    _, slash, tail = hosts.partition("/")
    return f"{scheme}://{auth}{at}{words[2]}{slash}{tail}"
