"""Render what a container's networking puts in its files and environment. Pure.

- resolv.conf on a user network (Docker's TransformForIntNS): the host's search and
  options kept, `--dns-search`/`--dns-option` merged, every nameserver replaced by the
  embedded resolver `127.0.0.11` (the originals, or `--dns`, become its upstreams) and
  `options ndots:0` unless an ndots option was given;
- resolv.conf on the default bridge with `--dns`: those servers instead of the host's;
- /etc/hosts: Docker's preamble, `--add-host` entries, the legacy links' children
  (`<ip>\\t<alias> <hostname> <name>`), then the container's own address;
- the links' environment (`links.ToEnv`): <ALIAS>_PORT*, <ALIAS>_NAME, <ALIAS>_ENV_*.
"""

from __future__ import annotations

from events.netspecs import LinkTarget, NetPlan
from workers.net.hostfiles import render_hosts

__all__ = ["RESOLVER_IP", "host_nameservers", "link_env", "render_hosts_for",
           "render_resolv_for"]

RESOLVER_IP = "127.0.0.11"


def _split(host_text: str) -> tuple[list[str], list[str], list[str]]:
    servers, search, options = [], [], []
    for line in host_text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append(fields[1])
        elif fields and fields[0] in ("search", "domain"):
            search += fields[1:]
        elif fields and fields[0] == "options":
            options += fields[1:]
    return servers, search, options


def host_nameservers(host_text: str) -> list[str]:
    """Return the host's nameservers (the embedded resolver dials them from the host)."""
    return _split(host_text)[0]


def render_resolv_for(plan: NetPlan, host_text: str) -> tuple[str, list[str]]:
    """Return (resolv.conf, the embedded resolver's upstreams) for a container."""
    servers, search, options = _split(host_text)
    search = list(plan.dns_search) or search
    options = list(dict.fromkeys([*options, *plan.dns_options]))
    upstreams = list(plan.dns) or servers
    lines = []
    if plan.embedded_dns:
        if not any(o.startswith("ndots:") for o in options):
            options.append("ndots:0")
        lines.append(f"nameserver {RESOLVER_IP}")
        lines.append(f"# ExtServers: [{' '.join(upstreams)}]")
    else:
        lines += [f"nameserver {s}" for s in upstreams]
    if search:
        lines.append("search " + " ".join(search))
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n", upstreams


def render_hosts_for(plan: NetPlan, hostname: str, ip: str | None) -> str:
    """Return /etc/hosts with --add-host entries and legacy links."""
    text = render_hosts(hostname, None)
    for entry in plan.extra_hosts:
        name, _, addr = entry.partition(":")
        if name and addr:
            text += f"{addr}\t{name}\n"
    for link in plan.links:
        if link.ip:
            names = [link.alias]
            names += [n for n in (link.hostname, link.name) if n and n not in names]
            text += f"{link.ip}\t{' '.join(names)}\n"
    if ip:
        text += f"{ip}\t{hostname}\n"
    return text


def _ports(link: LinkTarget) -> list[tuple[int, str]]:
    out = []
    for spec in link.ports:
        port, _, proto = spec.partition("/")
        first = port.split("-")[0]
        if first.isdigit():
            out.append((int(first), proto or "tcp"))
    # Docker sorts tcp first, then by number.
    return sorted(set(out), key=lambda p: (p[1] != "tcp", p[1], p[0]))


def link_env(plan: NetPlan) -> list[str]:
    """Return the environment the legacy links give the parent (Docker's links.ToEnv)."""
    env: list[str] = []
    for link in plan.links:
        alias = link.alias.upper().replace("-", "_")
        ports = _ports(link)
        if ports and link.ip:
            port, proto = ports[0]
            env.append(f"{alias}_PORT={proto}://{link.ip}:{port}")
            for port, proto in ports:
                pre = f"{alias}_PORT_{port}_{proto.upper()}"
                env += [f"{pre}={proto}://{link.ip}:{port}", f"{pre}_ADDR={link.ip}",
                        f"{pre}_PORT={port}", f"{pre}_PROTO={proto}"]
        env.append(f"{alias}_NAME=/{plan.parent_name}/{link.alias}")
        env += [f"{alias}_ENV_{item}" for item in link.env if "=" in item]
    return env
