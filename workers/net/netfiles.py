"""The networking part of a container's spawn: its hosts files, resolver and link env.

Called by the start saga once the default files are written (`hostfiles`), with the
plan's `NetPlan`: rewrite /etc/hosts and /etc/resolv.conf for user networks, `--dns*`,
`--add-host` and legacy links; have the embedded resolver listen in the sandbox; return
the environment links add. `--network container:<x>` copies x's files, as Docker reuses
them.
"""

from __future__ import annotations

import os
import shutil

from events.netspecs import NetPlan
from events.saga import StartPlan
from workers.net import dnsctl
from workers.net.dnsconf import RESOLVER_IP, link_env, render_hosts_for, render_resolv_for
from workers.net.dnsd import read_upstreams
from workers.net.hostfiles import HOST_RESOLV_CONF, HostFiles

__all__ = ["join_resolver", "prepare"]


def _write(path: str, content: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(content)
    os.chmod(path + ".tmp", 0o644)
    os.replace(path + ".tmp", path)


def prepare(root: str, redis_url: str, prefix: str, plan: StartPlan, files: HostFiles,
            netns: str | None, ip: str | None, hostname: str) -> list[str]:
    """Rewrite the files the plan's networking shapes; return the env links add."""
    net = plan.net
    if net is None:
        return []
    if net.shared_from:
        donor = os.path.join(root, "containers", net.shared_from)
        for name, dest in (("hosts", files.hosts), ("resolv.conf", files.resolv_conf),
                           ("hostname", files.hostname)):
            src = os.path.join(donor, name)
            if os.path.exists(src):
                shutil.copyfile(src, dest + ".tmp")
                os.replace(dest + ".tmp", dest)
        return []
    try:
        with open(HOST_RESOLV_CONF) as f:
            host_text = f.read()
    except FileNotFoundError:
        host_text = ""
    if net.embedded_dns or net.dns or net.dns_search or net.dns_options:
        resolv, upstreams = render_resolv_for(net, host_text)
        _write(files.resolv_conf, resolv)
        if net.embedded_dns and netns is not None:
            dnsctl.serve(root, redis_url, prefix, plan.container_id, netns, upstreams)
    if net.extra_hosts or net.links:
        _write(files.hosts, render_hosts_for(net, hostname, ip))
    return link_env(net)


def join_resolver(root: str, redis_url: str, prefix: str, cid: str, netns: str) -> None:
    """A running container joined a user network (`network connect`): as Docker's
    sandbox starts its resolver then, point its resolv.conf at 127.0.0.11 (its servers
    become the resolver's upstreams) and have the resolver listen in its sandbox.

    The file is rewritten in place: the container's bind mount holds its inode.
    """
    path = os.path.join(root, "containers", cid, "resolv.conf")
    try:
        with open(path) as f:
            current = f.read()
    except FileNotFoundError:
        current = ""
    if f"nameserver {RESOLVER_IP}" in current.splitlines():
        upstreams = read_upstreams(root, cid)
    else:
        resolv, upstreams = render_resolv_for(NetPlan(embedded_dns=True), current)
        with open(path, "r+" if current else "w") as f:
            f.write(resolv)
            f.truncate()
    dnsctl.serve(root, redis_url, prefix, cid, netns, upstreams)
