"""Where a registry is reached: endpoints, insecure registries, mirrors (dockerd's rules).

Configuration (environment, read once per operation):

- ``MOOR_INSECURE_REGISTRIES``: comma-separated ``host[:port]`` names or CIDRs that may be
  reached over plain HTTP (and HTTPS without verification), as dockerd's
  ``--insecure-registry``. Loopback (127.0.0.0/8, ::1, localhost) is always insecure.
- ``MOOR_REGISTRY_MIRRORS``: comma-separated mirror URLs for docker.io, tried first.
- ``MOOR_MAX_CONCURRENT_DOWNLOADS`` (3) and ``MOOR_MAX_CONCURRENT_UPLOADS`` (5).
- ``MOOR_PUSH_CHUNK_SIZE`` (bytes, default 16 MiB): blobs larger go up in chunks (PATCH).
- ``MOOR_REGISTRY_CA``: a PEM bundle trusted for HTTPS registries besides the system's.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import InvalidParameter

__all__ = ["Endpoint", "Settings", "endpoints_for"]

DOCKER_HUB = "docker.io"
_HUB_ENDPOINT = "https://registry-1.docker.io"


@dataclass(frozen=True)
class Endpoint:
    """One way to reach a registry: its base URL, and whether TLS is verified."""

    url: str
    verify_tls: bool = True
    mirror: bool = False


@dataclass(frozen=True)
class Settings:
    insecure: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    max_downloads: int = 3
    max_uploads: int = 5
    chunk_size: int = 16 << 20
    ca_file: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def items(name: str) -> tuple[str, ...]:
            return tuple(v.strip() for v in env.get(name, "").split(",") if v.strip())

        def number(name: str, default: int) -> int:
            try:
                value = int(env.get(name, "") or default)
            except ValueError:
                raise InvalidParameter(f"{name} must be a number") from None
            if value < 1:
                raise InvalidParameter(f"{name} must be at least 1")
            return value

        mirrors = tuple(m.rstrip("/") for m in items("MOOR_REGISTRY_MIRRORS"))
        for m in mirrors:
            if not m.startswith(("http://", "https://")):
                raise InvalidParameter(f"invalid mirror: unsupported scheme in {m!r}")
        return cls(insecure=items("MOOR_INSECURE_REGISTRIES"), mirrors=mirrors,
                   max_downloads=number("MOOR_MAX_CONCURRENT_DOWNLOADS", 3),
                   max_uploads=number("MOOR_MAX_CONCURRENT_UPLOADS", 5),
                   chunk_size=number("MOOR_PUSH_CHUNK_SIZE", 16 << 20),
                   ca_file=env.get("MOOR_REGISTRY_CA", ""))

    def is_insecure(self, domain: str) -> bool:
        """Return True if dockerd would allow plain HTTP to this registry host[:port]."""
        if domain == DOCKER_HUB:
            return False  # Docker Hub is always https
        host = _host(domain)
        if host == "localhost":
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            addr = None
        if addr is not None and addr.is_loopback:
            return True
        for entry in self.insecure:
            if entry in (domain, host):
                return True
            if addr is not None and "/" in entry:
                try:
                    if addr in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    continue
        return False


def _host(domain: str) -> str:
    if domain.startswith("["):
        return domain[1:domain.index("]")]
    return domain.rsplit(":", 1)[0] if domain.count(":") == 1 else domain


def endpoints_for(domain: str, settings: Settings, *, push: bool = False) -> list[Endpoint]:
    """Return the endpoints to try, in order (dockerd's `lookupV2Endpoints`)."""
    if domain == DOCKER_HUB:
        hub = [Endpoint(_HUB_ENDPOINT)]
        if push:
            return hub  # mirrors are read-only
        return [Endpoint(m, verify_tls=not settings.is_insecure(_netloc(m)), mirror=True)
                for m in settings.mirrors] + hub
    if settings.is_insecure(domain):
        return [Endpoint(f"https://{domain}", verify_tls=False), Endpoint(f"http://{domain}")]
    return [Endpoint(f"https://{domain}")]


def _netloc(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]
