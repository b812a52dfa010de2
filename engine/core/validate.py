"""Create-time validation with Docker's messages, and the merge of image defaults."""

from __future__ import annotations

import re

import msgspec

from engine.core.state import Image, World
from engine.errors import InvalidParameter, NotFound
from events.caps import check_capabilities, no_new_privileges
from events.hostopts import check_host_options
from events.seccomp import select_profile
from events.signals import parse_signal
from events.specs import ContainerConfig, HostConfig

__all__ = ["MIN_MEMORY", "merge_image_config", "validate_create"]

MIN_MEMORY = 6 * 1024 * 1024
_POLICIES = ("no", "always", "on-failure", "unless-stopped")
_PORT = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?(?:/(tcp|udp|sctp))?$")


def _check_port(spec: str) -> None:
    match = _PORT.match(spec)
    if not match or not all(0 < int(p) < 65536 for p in match.groups()[:2] if p):
        raise InvalidParameter(f'invalid port specification: "{spec}"')


def _check_restart_policy(host: HostConfig) -> None:
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
        select_profile(host.security_opt, host.privileged)  # a profile that cannot decode
    except ValueError as exc:
        # Docker answers a bad --security-opt with 500 (unclassified); 400 is the honest class.
        raise InvalidParameter(str(exc)) from None


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
    _check_restart_policy(host)
    _check_security(config, host)
    if host.memory and host.memory < MIN_MEMORY:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    if host.memory < 0 or host.pids_limit < 0 or host.nano_cpus < 0:
        raise InvalidParameter("invalid resource limit: must not be negative")
    for port in (*config.exposed_ports, *host.port_bindings):
        _check_port(port)
    for bindings in host.port_bindings.values():
        for binding in bindings:
            if binding.host_port and not _PORT.match(binding.host_port):
                raise InvalidParameter(f'invalid port specification: "{binding.host_port}"')
    mode = host.network_mode
    if mode not in ("bridge", "none", "host") and mode not in world.networks:
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
    )
    if not (merged.entrypoint or merged.cmd):
        raise InvalidParameter("no command specified")
    return merged
