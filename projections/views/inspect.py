"""Docker-shaped inspect documents (`GET /containers/{id}/json`, `GET /images/{id}/json`).

Pure: everything comes from the World. Times are RFC3339Nano in UTC, zero as Go's zero time.
"""

from __future__ import annotations

from typing import Any

from engine.core import names
from engine.core.state import Container, Image, World, host_lost, status_of
from engine.core.update import effective_swap
from engine.errors import NotFound
from events.hostopts import MASKED_PATHS, READONLY_PATHS
from events.specs import DEFAULT_SHM_SIZE, Mount
from projections.views.networks import host_config_networking
from projections.views.points import rfc3339_nano
from projections.views.shape import (
    network_endpoints,
    path_and_args,
    port_bindings,
    port_key,
    published_ports,
)

__all__ = ["find_container", "find_image", "inspect_container", "inspect_image"]


def find_container(world: World, ref: str) -> Container:
    """Resolve a name, full id or unique id prefix (Docker's lookup order) or raise 404."""
    return names.resolve(world, ref)


def find_image(world: World, ref: str) -> Image:
    """Resolve a tag, full id or unique id prefix to an image or raise 404."""
    try:
        return world.images[names.resolve_image(world, ref)]
    except NotFound:
        raise NotFound(f"No such image: {ref}") from None


def _state(world: World, ctr: Container) -> dict[str, Any]:
    lost = host_lost(world, ctr)
    placed = {"Host": ctr.host} if ctr.host else {}  # moorage's: the host it lives on
    return {
        "Status": status_of(ctr, lost),
        "Running": ctr.running,
        "Paused": ctr.paused,
        "Restarting": ctr.restarting,
        "OOMKilled": ctr.oom_killed,
        "Dead": ctr.dead,
        "Pid": ctr.pid,
        "ExitCode": ctr.exit_code,
        "Error": ctr.error,
        "StartedAt": rfc3339_nano(ctr.started_at),
        "FinishedAt": rfc3339_nano(ctr.finished_at),
        **placed,
    }


def _node(world: World, ctr: Container) -> dict[str, Any]:
    """The host a container is placed on, shaped as Docker Swarm classic's `Node` ({} with
    no host: single-host mode shows no such field)."""
    host = world.hosts.get(ctr.host) if ctr.host else None
    if host is None:
        return {}
    return {"Node": {"ID": host.id, "Name": host.id, "Labels": dict(host.labels),
                     "Capacity": host.capacity, "Subnet": host.subnet,
                     "Status": "ready" if host.alive else "lost"}}


def _host_config(ctr: Container) -> dict[str, Any]:
    host = ctr.host_config
    return {
        "NetworkMode": host.network_mode,
        "PortBindings": port_bindings(ctr),
        "RestartPolicy": {"Name": host.restart_policy.name or "no",
                          "MaximumRetryCount": host.restart_policy.maximum_retry_count},
        "AutoRemove": host.auto_remove,
        "Memory": host.memory,
        "PidsLimit": host.pids_limit or None,  # Docker reports "no limit" as null
        "NanoCpus": host.nano_cpus,
        "MemorySwap": effective_swap(host),
        "MemorySwappiness": None if host.memory_swappiness == -1 else host.memory_swappiness,
        "MemoryReservation": host.memory_reservation,
        "OomKillDisable": host.oom_kill_disable,
        "CpuShares": host.cpu_shares,
        "CpuPeriod": host.cpu_period,
        "CpuQuota": host.cpu_quota,
        "CpusetCpus": host.cpuset_cpus,
        "CpusetMems": host.cpuset_mems,
        "BlkioWeight": host.blkio_weight,
        "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in host.ulimits],
        "ShmSize": host.shm_size or DEFAULT_SHM_SIZE,  # Docker stores its default at create
        "LogConfig": {"Type": host.log_config.type, "Config": dict(host.log_config.config)},
        # Docker reports these unset lists as null.
        "CapAdd": list(host.cap_add) or None,
        "CapDrop": list(host.cap_drop) or None,
        "SecurityOpt": list(host.security_opt) or None,
        "ReadonlyRootfs": host.readonly_rootfs,
        "Privileged": host.privileged,
        "Devices": [{"PathOnHost": d.path_on_host,
                     "PathInContainer": d.path_in_container or d.path_on_host,
                     "CgroupPermissions": d.cgroup_permissions} for d in host.devices],
        "DeviceCgroupRules": list(host.device_cgroup_rules) or None,
        "GroupAdd": list(host.group_add) or None,
        "PidMode": host.pid_mode,
        "IpcMode": host.ipc_mode or "private",  # Docker 20.10's default mode
        "UTSMode": host.uts_mode,
        "CgroupnsMode": host.cgroupns_mode or "host",  # the engine's default (cgroup v1)
        "Runtime": host.runtime or "runc",
        "Isolation": host.isolation,
        "Binds": list(host.binds) or None,
        "VolumesFrom": list(host.volumes_from) or None,
        **({"Mounts": [_mount_doc(m) for m in host.mounts]} if host.mounts else {}),
        # Docker omits these when unset (omitempty).
        **({"Tmpfs": dict(host.tmpfs)} if host.tmpfs else {}),
        **({"Sysctls": dict(host.sysctls)} if host.sysctls else {}),
        **({"Init": True} if host.init else {}),
        # Docker writes its defaults into HostConfig at create; privileged has none.
        "MaskedPaths": None if host.privileged else list(MASKED_PATHS),
        "ReadonlyPaths": None if host.privileged else list(READONLY_PATHS),
    }


def _mount_doc(m: Mount) -> dict[str, Any]:
    """One HostConfig.Mounts entry as given, in Docker's mount.Mount JSON."""
    doc: dict[str, Any] = {"Type": m.type, "Source": m.source, "Target": m.target}
    if m.read_only:
        doc["ReadOnly"] = True
    if m.propagation:
        doc["BindOptions"] = {"Propagation": m.propagation}
    if m.no_copy or m.labels or m.driver:
        doc["VolumeOptions"] = {
            **({"NoCopy": True} if m.no_copy else {}),
            **({"Labels": dict(m.labels)} if m.labels else {}),
            **({"DriverConfig": {"Name": m.driver}} if m.driver else {})}
    if m.tmpfs_size or m.tmpfs_mode:
        doc["TmpfsOptions"] = {**({"SizeBytes": m.tmpfs_size} if m.tmpfs_size else {}),
                               **({"Mode": m.tmpfs_mode} if m.tmpfs_mode else {})}
    return doc


def _config(ctr: Container) -> dict[str, Any]:
    cfg = ctr.config
    doc: dict[str, Any] = {
        "Hostname": cfg.hostname or ctr.id[:12],
        "Domainname": "",
        "User": cfg.user,
        "AttachStdin": cfg.attach_stdin,
        "AttachStdout": cfg.attach_stdout,
        "AttachStderr": cfg.attach_stderr,
        "Tty": cfg.tty,
        "OpenStdin": cfg.open_stdin,
        "StdinOnce": cfg.stdin_once,
        "Env": list(cfg.env),
        "Cmd": list(cfg.cmd) if cfg.cmd is not None else None,
        "Image": ctr.image,
        "WorkingDir": cfg.working_dir,
        "Entrypoint": list(cfg.entrypoint) if cfg.entrypoint is not None else None,
        "Labels": dict(cfg.labels),
    }
    # Docker omits these when unset (omitempty).
    if cfg.volumes:
        doc["Volumes"] = {path: {} for path in cfg.volumes}
    if cfg.exposed_ports:
        doc["ExposedPorts"] = {port_key(p): {} for p in cfg.exposed_ports}
    if cfg.stop_signal:
        doc["StopSignal"] = cfg.stop_signal
    if cfg.stop_timeout is not None:
        doc["StopTimeout"] = cfg.stop_timeout
    return doc


def _network_settings(world: World, ctr: Container) -> dict[str, Any]:
    networks = network_endpoints(world, ctr)
    # The deprecated top-level address fields describe the default bridge only.
    bridge = networks.get("bridge", {})
    sandbox_key = ctr.sandbox_key
    return {
        "SandboxID": sandbox_key.rsplit("/", 1)[-1] if sandbox_key else "",
        "SandboxKey": sandbox_key,
        "Ports": published_ports(ctr),
        "EndpointID": bridge.get("EndpointID", ""),
        "Gateway": bridge.get("Gateway", ""),
        "IPAddress": bridge.get("IPAddress", ""),
        "IPPrefixLen": bridge.get("IPPrefixLen", 0),
        "MacAddress": bridge.get("MacAddress", ""),
        "Networks": networks,
    }


def inspect_container(world: World, ctr: Container, now_ns: int = 0) -> dict[str, Any]:
    """Return the Docker inspect document of a container.

    `now_ns` is accepted for callers that pass the clock; no field is relative to it yet.
    """
    path, args = path_and_args(ctr)
    return {
        "Id": ctr.id,
        "Created": rfc3339_nano(ctr.created),
        "Path": path,
        "Args": args,
        "State": _state(world, ctr),
        "Image": ctr.image_id,
        "ResolvConfPath": "",
        "HostnamePath": "",
        "HostsPath": "",
        "LogPath": "",
        "Name": f"/{ctr.name}",
        "RestartCount": ctr.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "HostConfig": {**_host_config(ctr), **host_config_networking(world, ctr)},
        "Mounts": [],
        "Config": _config(ctr),
        "NetworkSettings": _network_settings(world, ctr),
        **_node(world, ctr),
    }


def _image_created_ns(created: int) -> int:
    # The image's unit is not pinned down by its writers: small values are seconds.
    return created * 1_000_000_000 if 0 < created < 10**12 else created


def inspect_image(world: World, image: Image) -> dict[str, Any]:
    """Return the Docker inspect document of an image."""
    cfg = image.config
    config: dict[str, Any] = {
        "User": cfg.user,
        "Env": list(cfg.env),
        "Cmd": list(cfg.cmd) if cfg.cmd is not None else None,
        "Entrypoint": list(cfg.entrypoint) if cfg.entrypoint is not None else None,
        "WorkingDir": cfg.working_dir,
        "Labels": dict(cfg.labels) or None,
    }
    if cfg.exposed_ports:
        config["ExposedPorts"] = {port_key(p): {} for p in cfg.exposed_ports}
    if cfg.stop_signal:
        config["StopSignal"] = cfg.stop_signal
    return {
        "Id": image.id,
        "RepoTags": list(image.repo_tags),
        "RepoDigests": list(image.repo_digests),
        "Parent": "",
        "Comment": "",
        "Created": rfc3339_nano(_image_created_ns(image.created)),
        "Config": config,
        "Os": "linux",
        "Size": image.size,
        "RootFS": {"Type": "layers", "Layers": list(image.layers)},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    }
