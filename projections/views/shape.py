"""Docker-shaped pieces shared by `ps` and `inspect`: command line, ports, network endpoints."""

from __future__ import annotations

from typing import Any

from engine.core.state import Container, World

__all__ = [
    "command_line",
    "exposed_port_keys",
    "network_endpoints",
    "network_id",
    "path_and_args",
    "port_bindings",
    "port_key",
    "published_ports",
]

_DEFAULT_HOST_IP = "0.0.0.0"


def network_id(name: str) -> str:
    """Return a network's id: moorage identifies networks by name (one place to change it)."""
    return name


def path_and_args(ctr: Container) -> tuple[str, list[str]]:
    """Return Docker's Path and Args: the entrypoint (or cmd) split into program and rest."""
    argv = [*(ctr.config.entrypoint or ()), *(ctr.config.cmd or ())]
    if not argv:
        return "", []
    return argv[0], argv[1:]


def command_line(ctr: Container) -> str:
    """Return the `Command` of a container list item: Path and Args joined by spaces."""
    path, args = path_and_args(ctr)
    return " ".join([path, *args]) if args else path


def port_key(spec: str) -> str:
    """Return a port spec with its protocol ("80" -> "80/tcp")."""
    return spec if "/" in spec else f"{spec}/tcp"


def _expand(spec: str) -> list[str]:
    # Docker expands "8000-8002/tcp" into one entry per port at create.
    key = port_key(spec)
    ports, proto = key.split("/", 1)
    first, _, last = ports.partition("-")
    if not last:
        return [key]
    return [f"{p}/{proto}" for p in range(int(first), int(last) + 1)]


def exposed_port_keys(ctr: Container) -> list[str]:
    """Return every exposed or published container port as "<port>/<proto>", in order."""
    keys: dict[str, None] = {}
    for spec in (*ctr.config.exposed_ports, *ctr.host_config.port_bindings):
        for key in _expand(spec):
            keys[key] = None
    return list(keys)


def port_bindings(ctr: Container) -> dict[str, list[dict[str, str]]]:
    """Return HostConfig.PortBindings as configured ({"80/tcp": [{"HostIp","HostPort"}]})."""
    return {port_key(spec): [{"HostIp": b.host_ip, "HostPort": b.host_port} for b in bindings]
            for spec, bindings in ctr.host_config.port_bindings.items()}


def _host_ports(host_port: str, count: int) -> list[str]:
    first, _, last = host_port.partition("-")
    if last and int(last) - int(first) + 1 == count:
        return [str(p) for p in range(int(first), int(last) + 1)]
    return [host_port] * count


def published_ports(ctr: Container) -> dict[str, list[dict[str, str]] | None]:
    """Return NetworkSettings.Ports: bindings per exposed port while running, else {}."""
    if not ctr.running or ctr.restarting:
        return {}
    ports: dict[str, list[dict[str, str]] | None] = {key: None for key in exposed_port_keys(ctr)}
    for spec, bindings in ctr.host_config.port_bindings.items():
        keys = _expand(spec)
        for binding in bindings:
            hosts = _host_ports(binding.host_port, len(keys)) if binding.host_port else \
                [""] * len(keys)
            for key, host in zip(keys, hosts, strict=True):
                entries = ports.get(key) or []
                entries.append({"HostIp": binding.host_ip or _DEFAULT_HOST_IP, "HostPort": host})
                ports[key] = entries
    return ports


def network_endpoints(world: World, ctr: Container) -> dict[str, dict[str, Any]]:
    """Return NetworkSettings.Networks: an entry per network, addressed while joined."""
    from projections.views.networks import endpoint_entries

    return endpoint_entries(world, ctr)
