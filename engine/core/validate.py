"""Create-time validation with Docker's messages, and the merge of image defaults."""

from __future__ import annotations

import re

import msgspec

from engine.core.state import Image, World
from engine.errors import InvalidParameter, NotFound
from events.caps import check_capabilities, no_new_privileges
from events.hostopts import check_host_options
from events.logopts import check_log_config
from events.seccomp import select_profile
from events.signals import parse_signal
from events.specs import ContainerConfig, HostConfig

__all__ = [
    "MIN_MEMORY", "check_resources", "check_restart_policy", "merge_image_config",
    "validate_create",
]

MIN_MEMORY = 6 * 1024 * 1024
_POLICIES = ("no", "always", "on-failure", "unless-stopped")
_CPUSET = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
# go-units' ulimit names (the CLI's `--ulimit`, the API's Ulimits[].Name).
_ULIMITS = frozenset({"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice",
                      "nofile", "nproc", "rss", "rtprio", "rttime", "sigpending", "stack"})
_PORT = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?(?:/(tcp|udp|sctp))?$")


def _check_port(spec: str) -> None:
    match = _PORT.match(spec)
    if not match or not all(0 < int(p) < 65536 for p in match.groups()[:2] if p):
        raise InvalidParameter(f'invalid port specification: "{spec}"')


def check_restart_policy(host: HostConfig) -> None:
    """Raise Docker's 400 for a restart policy it refuses (create and update)."""
    policy = host.restart_policy
    name = policy.name or "no"
    if name not in _POLICIES:
        raise InvalidParameter(
            f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', "
            "'on-failure', or 'unless-stopped'"
        )
    if policy.maximum_retry_count < 0:
        if name != "on-failure":
            raise InvalidParameter(
                "invalid restart policy: maximum retry count can only be used with "
                "'on-failure' and cannot be negative"
            )
        raise InvalidParameter("invalid restart policy: maximum retry count cannot be negative")
    if policy.maximum_retry_count and name != "on-failure":
        raise InvalidParameter(
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        )
    if host.auto_remove and name != "no":
        raise InvalidParameter("can't create 'AutoRemove' container with restart policy")


def _check_security(config: ContainerConfig, host: HostConfig) -> None:
    try:
        check_capabilities("CapAdd", host.cap_add)
        check_capabilities("CapDrop", host.cap_drop)
        no_new_privileges(host.security_opt)
        check_host_options(config, host)
        check_log_config(host.log_config)
        select_profile(host.security_opt, host.privileged)  # a profile that cannot decode
    except ValueError as exc:
        # Docker answers a bad --security-opt with 500 (unclassified); 400 is the honest class.
        raise InvalidParameter(str(exc)) from None


def _check_cpuset(value: str, what: str) -> None:
    """Check Docker's list format ("0-2,4"); whether the host has them is the cgroup's say."""
    ok = not value or _CPUSET.match(value) and all(
        int(a) <= int(b) for a, _, b in (r.partition("-") for r in value.split(",")) if b)
    if not ok:
        raise InvalidParameter(f"Invalid value {value} for cpuset {what}: invalid format: {value}")


def check_resources(host: HostConfig, update: bool = False) -> None:
    """Raise Docker's 400 for resources it refuses (moby's verifyPlatformContainerResources).

    `update` is a `docker update` body, whose zero fields mean "unchanged": a swap limit
    without a memory limit is then allowed.
    """
    mem, swap = host.memory, host.memory_swap
    if mem and mem < MIN_MEMORY:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    if mem > 0 and swap > 0 and swap < mem:
        raise InvalidParameter(
            "Minimum memoryswap limit should be larger than memory limit, see usage")
    if mem == 0 and swap > 0 and not update:
        raise InvalidParameter(
            "You should always set the Memory limit when using Memoryswap limit, see usage")
    if host.memory_swappiness != -1 and not 0 <= host.memory_swappiness <= 100:
        raise InvalidParameter(f"Invalid value: {host.memory_swappiness}, "
                               "valid memory swappiness range is 0-100")
    if 0 < host.memory_reservation < MIN_MEMORY:
        raise InvalidParameter("Minimum memory reservation allowed is 6MB")
    if mem > 0 and host.memory_reservation > 0 and mem < host.memory_reservation:
        raise InvalidParameter(
            "Minimum memory limit can not be less than memory reservation limit, see usage")
    if host.nano_cpus > 0 and host.cpu_period > 0:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if host.nano_cpus > 0 and host.cpu_quota > 0:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    if host.cpu_period and not 1000 <= host.cpu_period <= 1_000_000:
        raise InvalidParameter("CPU cfs period can not be less than 1ms (i.e. 1000) or larger "
                               "than 1s (i.e. 1000000)")
    if 0 < host.cpu_quota < 1000:
        raise InvalidParameter("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    _check_cpuset(host.cpuset_cpus, "cpus")
    _check_cpuset(host.cpuset_mems, "mems")
    if host.blkio_weight and not 10 <= host.blkio_weight <= 1000:
        raise InvalidParameter("Range of blkio weight is from 10 to 1000")
    if host.shm_size < 0:
        raise InvalidParameter("SHM size can not be less than 0")
    if min(mem, host.pids_limit, host.nano_cpus, host.cpu_shares, host.memory_reservation) < 0:
        raise InvalidParameter("invalid resource limit: must not be negative")
    for limit in host.ulimits:
        if limit.name not in _ULIMITS:
            raise InvalidParameter(f"invalid ulimit type: {limit.name}")
        if limit.soft > limit.hard:
            raise InvalidParameter(f"ulimit soft limit must be less than or equal to hard "
                                   f"limit: {limit.soft} > {limit.hard}")


def validate_create(world: World, config: ContainerConfig, host: HostConfig) -> None:
    """Raise Docker's 400/404 for a config that cannot be created."""
    if config.working_dir and not config.working_dir.startswith("/"):
        raise InvalidParameter(
            f"the working directory '{config.working_dir}' is invalid, "
            "it needs to be an absolute path"
        )
    if config.stop_signal:
        try:
            parse_signal(config.stop_signal)
        except ValueError as exc:
            raise InvalidParameter(str(exc)) from None
    for entry in config.env:
        if not entry or entry.startswith("="):
            raise InvalidParameter(f"invalid environment variable: {entry}")
    check_restart_policy(host)
    _check_security(config, host)
    check_resources(host)
    for port in (*config.exposed_ports, *host.port_bindings):
        _check_port(port)
    for bindings in host.port_bindings.values():
        for binding in bindings:
            if binding.host_port and not _PORT.match(binding.host_port):
                raise InvalidParameter(f'invalid port specification: "{binding.host_port}"')
    mode = host.network_mode
    if mode not in ("bridge", "none", "host") and mode not in world.networks \
            and not mode.startswith("container:"):  # engine.core.networks checks those
        raise NotFound(f"network {mode} not found")


def merge_image_config(config: ContainerConfig, image: Image) -> ContainerConfig:
    """Fill what the user left unset from the image's config, as Docker's create does."""
    img = image.config
    entrypoint = config.entrypoint
    cmd = config.cmd
    if entrypoint is None:
        entrypoint = img.entrypoint
        if cmd is None:
            cmd = img.cmd
    elif entrypoint == ("",):
        entrypoint = None  # [""] means "no entrypoint", as in Docker
    env_keys = {e.split("=", 1)[0] for e in config.env}
    env = tuple(e for e in img.env if e.split("=", 1)[0] not in env_keys) + config.env
    merged = msgspec.structs.replace(
        config,
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        working_dir=config.working_dir or img.working_dir,
        user=config.user or img.user,
        stop_signal=config.stop_signal or img.stop_signal,
        exposed_ports=tuple(dict.fromkeys((*img.exposed_ports, *config.exposed_ports))),
        labels={**img.labels, **config.labels},
        volumes=tuple(dict.fromkeys((*img.volumes, *config.volumes))),
    )
    if not (merged.entrypoint or merged.cmd):
        raise InvalidParameter("no command specified")
    return merged
