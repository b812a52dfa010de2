"""The container's /etc/hosts, /etc/hostname and /etc/resolv.conf, written into a directory.

The files go into the container's own directory and are later bind-mounted (or copied)
into its rootfs, as dockerd does with <container dir>/hosts, hostname, resolv.conf.

resolv.conf follows Docker's default-bridge behaviour (no embedded DNS server):
- start from the host's /etc/resolv.conf; when that only names systemd-resolved's stub
  (127.0.0.53), use /run/systemd/resolve/resolv.conf, which lists the real upstreams;
- drop loopback nameservers (127.0.0.0/8, ::1): inside the netns they point at the
  container itself; drop IPv6 nameservers too, since moorage networks are IPv4 only;
- keep search/domain/options lines as they are;
- if no nameserver is left, fall back to Google's public DNS, 8.8.8.8 and 8.8.4.4 (Docker's
  defaults). That sends DNS queries off-site: set a non-loopback resolver on the host to
  avoid it.
"""

from __future__ import annotations

import ipaddress
import os

import msgspec

from workers.net.netconf import short_id

__all__ = [
    "DEFAULT_NAMESERVERS",
    "HostFiles",
    "render_hostname",
    "render_hosts",
    "render_resolv_conf",
    "write_hostfiles",
]

DEFAULT_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
HOST_RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_UPSTREAM = "/run/systemd/resolve/resolv.conf"

# Docker's fixed preamble of a container's /etc/hosts.
_HOSTS_HEAD = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


class HostFiles(msgspec.Struct, frozen=True, kw_only=True):
    """Paths of the three files written for a container."""

    hosts: str
    hostname: str
    resolv_conf: str


def render_hostname(hostname: str) -> str:
    """Return /etc/hostname's content."""
    return hostname + "\n"


def render_hosts(hostname: str, ip: str | None) -> str:
    """Return /etc/hosts: the localhost lines, then `<ip>\\t<hostname>` if networked."""
    return _HOSTS_HEAD + (f"{ip}\t{hostname}\n" if ip else "")


def _nameserver(line: str) -> str | None:
    fields = line.split()
    return fields[1] if len(fields) >= 2 and fields[0] == "nameserver" else None


def _usable(server: str) -> bool:
    """Tell whether a nameserver is reachable from the container's IPv4-only netns."""
    try:
        addr = ipaddress.ip_address(server.split("%")[0])
    except ValueError:
        return False
    return addr.version == 4 and not addr.is_loopback


def render_resolv_conf(host_text: str) -> str:
    """Return the container's resolv.conf from the host's content (Docker's filtering)."""
    kept: list[str] = []
    servers = 0
    for line in host_text.splitlines():
        server = _nameserver(line)
        if server is None:
            kept.append(line)
        elif _usable(server):
            kept.append(line)
            servers += 1
    if servers == 0:
        kept += [f"nameserver {s}" for s in DEFAULT_NAMESERVERS]
    return "\n".join(kept).strip("\n") + "\n"


def _host_resolv_text(path: str) -> str:
    """Read the host's resolv.conf, following systemd-resolved's stub to the upstreams."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return ""
    servers = [s for s in map(_nameserver, text.splitlines()) if s]
    if path == HOST_RESOLV_CONF and servers == ["127.0.0.53"] and os.path.exists(RESOLVED_UPSTREAM):
        with open(RESOLVED_UPSTREAM) as f:
            return f.read()
    return text


def _write(path: str, content: str) -> None:
    """Write atomically so a reader (or a bind mount being set up) never sees half a file.

    Rewrite before mounting: a bind mount pins the old inode, so replacing the file later
    would not reach the container.
    """
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(content)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def write_hostfiles(directory: str, cid: str, ip: str | None, hostname: str = "",
                    resolv_source: str = HOST_RESOLV_CONF) -> HostFiles:
    """Write hosts, hostname and resolv.conf for a container into directory.

    hostname defaults to the short id (Docker's default); ip None (network "none") leaves
    only the localhost lines in hosts. Idempotent: the same inputs write the same bytes.
    """
    name = hostname or short_id(cid)
    os.makedirs(directory, exist_ok=True)
    files = HostFiles(hosts=os.path.join(directory, "hosts"),
                      hostname=os.path.join(directory, "hostname"),
                      resolv_conf=os.path.join(directory, "resolv.conf"))
    _write(files.hostname, render_hostname(name))
    _write(files.hosts, render_hosts(name, ip))
    _write(files.resolv_conf, render_resolv_conf(_host_resolv_text(resolv_source)))
    return files
