"""Translate a `POST /containers/create` body into moorage's ContainerConfig and HostConfig.

Pure. Docker clients send many fields at their zero values (the docker CLI sends almost
the whole HostConfig), so a field moorage does not implement is accepted when it holds its
zero value (null, false, 0, "", [], {} or Docker's own "unset" marker such as
ConsoleSize [0, 0]) and refused with a 400 naming the field otherwise: a setting is
never silently dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from commands.options import parse_host_ip, parse_host_port
from engine.errors import InvalidParameter
from events.specs import (
    ContainerConfig,
    DeviceMapping,
    HostConfig,
    LogConfig,
    PortBinding,
    RestartPolicy,
    Ulimit,
)
from moor.api.jsonshape import json_object
from moor.api.mounts import config_volumes, host_mounts

__all__ = ["UnsupportedSetting", "container_spec", "create_warnings", "is_unset", "resources"]

# Fields moorage maps onto its config (Config / HostConfig); everything else must be unset.
_CONFIG_FIELDS = frozenset({
    "Image", "Cmd", "Entrypoint", "Env", "Labels", "WorkingDir", "User", "StopSignal",
    "StopTimeout", "Hostname", "ExposedPorts",
    "Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStdout", "AttachStderr",
    "Volumes",
})
_HOST_FIELDS = frozenset({
    "PortBindings", "RestartPolicy", "AutoRemove", "NetworkMode", "Memory", "PidsLimit",
    "NanoCpus", "CapAdd", "CapDrop", "SecurityOpt", "ReadonlyRootfs", "Privileged", "Tmpfs",
    "Sysctls", "Devices", "DeviceCgroupRules", "GroupAdd", "PidMode", "IpcMode", "UTSMode",
    "CgroupnsMode", "Init", "Runtime", "Isolation", "MemorySwap", "MemorySwappiness",
    "MemoryReservation", "OomKillDisable", "CpuShares", "CpuPeriod", "CpuQuota", "CpusetCpus",
    "CpusetMems", "BlkioWeight", "Ulimits", "ShmSize", "LogConfig",
    "Dns", "DnsSearch", "DnsOptions", "ExtraHosts", "Links",  # moor.api.netcreate
    "Binds", "Mounts", "VolumesFrom",
    # The terminal's size `docker run -t` sends: taken as a hint only, since the CLI
    # resizes the pty (POST /containers/{id}/resize) as soon as the container started.
    "ConsoleSize",
})
# Values that mean "not set" for a field although they are not zero.
_UNSET_MARKERS: dict[str, tuple[Any, ...]] = {
    "HostConfig.ConsoleSize": ([0, 0],),
}


# Docker's map-typed fields: any key in them is a setting (an empty value included).
_MAPS = frozenset({"Volumes", "HostConfig.Sysctls", "HostConfig.StorageOpt", "HostConfig.Tmpfs",
                   "HostConfig.Annotations", "DriverOpts"})
_FIELD = re.compile(r"[A-Z][A-Za-z0-9]*")


class UnsupportedSetting(InvalidParameter):
    """A create field moorage does not implement was set (HTTP 400)."""


def is_unset(value: Any, where: str = "") -> bool:
    """Return whether a JSON value is a zero value (recursively) or a known unset marker."""
    if value in _UNSET_MARKERS.get(where, ()):
        return True
    if value is None or value is False or value == "" or (
            isinstance(value, int | float) and not isinstance(value, bool) and value == 0):
        return True
    if isinstance(value, list):
        return all(is_unset(item) for item in value)
    if isinstance(value, dict):
        # A struct is unset when all its fields are; a map only when it is empty.
        if where in _MAPS or where.rsplit(".", 1)[-1] in _MAPS or \
                any(not _FIELD.fullmatch(str(key)) for key in value):
            return not value
        return all(is_unset(item, f"{where}.{key}") for key, item in value.items())
    return False


def _refuse_unsupported(doc: Mapping[str, Any], supported: frozenset[str], where: str) -> None:
    for key, value in doc.items():
        path = f"{where}.{key}" if where else key
        if key not in supported and not is_unset(value, path):
            raise UnsupportedSetting(
                f"moorage does not support the container setting {path} "
                f"(got {_short(value)}); remove it or leave it at its default")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _strings(value: Any, name: str) -> tuple[str, ...] | None:
    """Docker's StrSlice: null, a string or a list of strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidParameter(f"invalid JSON: {name} must be a string or a list of strings")


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParameter(f"invalid JSON: {name} must be a string")
    return value


def _int(value: Any, name: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"invalid JSON: {name} must be an integer")
    return value


def _labels(value: Any) -> dict[str, str]:
    labels = json_object(value, "Labels")
    if not all(isinstance(v, str) for v in labels.values()):
        raise InvalidParameter("invalid JSON: Labels must map strings to strings")
    return dict(labels)


def _text_map(value: Any, name: str) -> dict[str, str]:
    doc = json_object(value, name)
    if not all(isinstance(v, str) for v in doc.values()):
        raise InvalidParameter(f"invalid JSON: {name} must map strings to strings")
    return dict(doc)


def _devices(value: Any) -> tuple[DeviceMapping, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidParameter("invalid JSON: HostConfig.Devices must be a list")
    out = []
    for item in value:
        doc = json_object(item, "HostConfig.Devices entry")
        host_path = _text(doc.get("PathOnHost"), "PathOnHost")
        out.append(DeviceMapping(
            path_on_host=host_path,
            path_in_container=_text(doc.get("PathInContainer"), "PathInContainer") or host_path,
            cgroup_permissions=_text(doc.get("CgroupPermissions"), "CgroupPermissions") or "rwm"))
    return tuple(out)


def _security_fields(host: Mapping[str, Any]) -> dict[str, Any]:
    """The namespace, device, sysctl and tmpfs fields of HostConfig."""
    ipc = _text(host.get("IpcMode"), "HostConfig.IpcMode")
    return {
        "privileged": bool(host.get("Privileged")),
        "tmpfs": _text_map(host.get("Tmpfs"), "HostConfig.Tmpfs"),
        "sysctls": _text_map(host.get("Sysctls"), "HostConfig.Sysctls"),
        "devices": _devices(host.get("Devices")),
        "device_cgroup_rules": _strings(host.get("DeviceCgroupRules"),
                                        "HostConfig.DeviceCgroupRules") or (),
        "group_add": _strings(host.get("GroupAdd"), "HostConfig.GroupAdd") or (),
        "pid_mode": _text(host.get("PidMode"), "HostConfig.PidMode"),
        "ipc_mode": "" if ipc == "private" else ipc,  # "" is Docker 20.10's default, private
        "uts_mode": _text(host.get("UTSMode"), "HostConfig.UTSMode"),
        "cgroupns_mode": _text(host.get("CgroupnsMode"), "HostConfig.CgroupnsMode"),
        "init": bool(host.get("Init")),
        "runtime": _text(host.get("Runtime"), "HostConfig.Runtime"),
        "isolation": _text(host.get("Isolation"), "HostConfig.Isolation"),
    }


def _ulimits(value: Any) -> tuple[Ulimit, ...]:
    if not isinstance(value, list | None):
        raise InvalidParameter("invalid JSON: HostConfig.Ulimits must be a list")
    return tuple(Ulimit(name=_text(doc.get("Name"), "Ulimit.Name"),
                        soft=_int(doc.get("Soft"), "Ulimit.Soft"),
                        hard=_int(doc.get("Hard"), "Ulimit.Hard"))
                 for doc in (json_object(item, "HostConfig.Ulimits entry") for item in value or ()))


def resources(host: Mapping[str, Any]) -> dict[str, Any]:
    """Return the HostConfig resource fields of a create or update body (Docker's Resources)."""
    swappiness = host.get("MemorySwappiness")
    return {
        "memory": _int(host.get("Memory"), "Memory"),
        "nano_cpus": _int(host.get("NanoCpus", host.get("NanoCPUs")), "NanoCpus"),
        "memory_swap": _int(host.get("MemorySwap"), "MemorySwap"),
        "memory_swappiness": -1 if swappiness is None else _int(swappiness, "MemorySwappiness"),
        "memory_reservation": _int(host.get("MemoryReservation"), "MemoryReservation"),
        "oom_kill_disable": bool(host.get("OomKillDisable")),
        "cpu_shares": _int(host.get("CpuShares"), "CpuShares"),
        "cpu_period": _int(host.get("CpuPeriod"), "CpuPeriod"),
        "cpu_quota": _int(host.get("CpuQuota"), "CpuQuota"),
        "cpuset_cpus": _text(host.get("CpusetCpus"), "CpusetCpus"),
        "cpuset_mems": _text(host.get("CpusetMems"), "CpusetMems"),
        "blkio_weight": _int(host.get("BlkioWeight"), "BlkioWeight"),
        "ulimits": _ulimits(host.get("Ulimits")),
        "shm_size": _int(host.get("ShmSize"), "ShmSize"),
    }


def _port_key(key: str) -> str:
    return key if "/" in key else f"{key}/tcp"


def _bindings(value: Any) -> dict[str, tuple[PortBinding, ...]]:
    out: dict[str, tuple[PortBinding, ...]] = {}
    for key, items in json_object(value, "HostConfig.PortBindings").items():
        if items is None:
            items = []
        if not isinstance(items, list):
            raise InvalidParameter("invalid JSON: HostConfig.PortBindings values must be lists")
        bindings = []
        for item in items:
            item = json_object(item, "HostConfig.PortBindings entry")
            port = parse_host_port(_text(item.get("HostPort"), "HostPort"))
            bindings.append(PortBinding(host_ip=parse_host_ip(_text(item.get("HostIp"), "HostIp")),
                                        host_port=str(port) if port else ""))
        out[_port_key(key)] = tuple(bindings)
    return out


def _restart_policy(value: Any) -> RestartPolicy:
    doc = json_object(value, "HostConfig.RestartPolicy")
    return RestartPolicy(name=_text(doc.get("Name"), "RestartPolicy.Name") or "no",
                         maximum_retry_count=_int(doc.get("MaximumRetryCount"),
                                                  "RestartPolicy.MaximumRetryCount"))


def _log_config(value: Any) -> LogConfig:
    """Map HostConfig.LogConfig; an empty Type is the daemon's default driver (json-file)."""
    doc = json_object(value, "HostConfig.LogConfig")
    _refuse_unsupported(doc, frozenset({"Type", "Config"}), "HostConfig.LogConfig")
    return LogConfig(type=_text(doc.get("Type"), "LogConfig.Type") or "json-file",
                     config=_text_map(doc.get("Config"), "LogConfig.Config"))


def _network_mode(host: Mapping[str, Any]) -> str:
    mode = _text(host.get("NetworkMode"), "HostConfig.NetworkMode")
    return "bridge" if mode in ("", "default") else mode


def _check_networking(doc: Any, mode: str) -> None:
    """Check NetworkingConfig's shape (moor.api.netcreate reads it into Networking)."""
    from moor.api.netcreate import check_networking

    check_networking(doc, mode)


def container_spec(body: Any) -> tuple[ContainerConfig, HostConfig]:
    """Return (Config, HostConfig) for a create request body, or raise Docker-style 400s."""
    if not isinstance(body, dict):
        raise InvalidParameter("config cannot be empty in order to create a container")
    host = json_object(body.get("HostConfig"), "HostConfig")
    config_doc = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
    _refuse_unsupported(config_doc, _CONFIG_FIELDS, "")
    _refuse_unsupported(host, _HOST_FIELDS, "HostConfig")
    mode = _network_mode(host)
    _check_networking(body.get("NetworkingConfig"), mode)
    stop_timeout = body.get("StopTimeout")
    config = ContainerConfig(
        image=_text(body.get("Image"), "Image"),
        cmd=_strings(body.get("Cmd"), "Cmd"),
        entrypoint=_strings(body.get("Entrypoint"), "Entrypoint"),
        env=_strings(body.get("Env"), "Env") or (),
        labels=_labels(body.get("Labels")),
        working_dir=_text(body.get("WorkingDir"), "WorkingDir"),
        user=_text(body.get("User"), "User"),
        stop_signal=_text(body.get("StopSignal"), "StopSignal"),
        stop_timeout=None if stop_timeout is None else _int(stop_timeout, "StopTimeout"),
        hostname=_text(body.get("Hostname"), "Hostname"),
        exposed_ports=tuple(_port_key(k) for k in json_object(body.get("ExposedPorts"),
                                                          "ExposedPorts")),
        tty=bool(body.get("Tty")), open_stdin=bool(body.get("OpenStdin")),
        stdin_once=bool(body.get("StdinOnce")), attach_stdin=bool(body.get("AttachStdin")),
        attach_stdout=bool(body.get("AttachStdout")),
        attach_stderr=bool(body.get("AttachStderr")),
        volumes=config_volumes(body),
    )
    pids = _int(host.get("PidsLimit"), "HostConfig.PidsLimit")
    host_config = HostConfig(
        network_mode=mode,
        port_bindings=_bindings(host.get("PortBindings")),
        restart_policy=_restart_policy(host.get("RestartPolicy")),
        auto_remove=bool(host.get("AutoRemove")),
        pids_limit=max(pids, 0),  # Docker: 0 and -1 both mean unlimited
        **resources(host),
        cap_add=_strings(host.get("CapAdd"), "HostConfig.CapAdd") or (),
        cap_drop=_strings(host.get("CapDrop"), "HostConfig.CapDrop") or (),
        security_opt=_strings(host.get("SecurityOpt"), "HostConfig.SecurityOpt") or (),
        readonly_rootfs=bool(host.get("ReadonlyRootfs")),
        **_security_fields(host),
        log_config=_log_config(host.get("LogConfig")),
        **host_mounts(host),
    )
    return config, host_config


def create_warnings(host: HostConfig) -> list[str]:
    """Return the Warnings Docker attaches to a create response (never null)."""
    if host.network_mode == "host" and host.port_bindings:
        return ["Published ports are discarded when using host network mode"]
    return []
