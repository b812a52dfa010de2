"""`moor create|run|start|stop|restart|kill|rm|rename|update`: lifecycle commands on the client.

Module level stays import-free (argparse only): the client, the schema and redis load
when a handler runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from moor.failures import guard, print_error

if TYPE_CHECKING:
    from commands.client import Client
    from events.netspecs import Networking
    from events.specs import ContainerConfig, HostConfig, LogConfig, RestartPolicy, Ulimit

__all__ = ["add_container_flags", "container_spec", "networking", "register"]

Action = Callable[["Client", str], object]


def _client(args: argparse.Namespace) -> Client:
    from moor.cliargs import client_of

    return client_of(args, lite=True)  # a lifecycle call is short: no redis-py


def _restart_policy(text: str) -> RestartPolicy:
    from events.specs import RestartPolicy

    name, _, count = text.partition(":")
    return RestartPolicy(name=name, maximum_retry_count=int(count) if count.isdigit() else 0)


def _security_opts(values: list[str]) -> tuple[str, ...]:
    """Read a `--security-opt seccomp=FILE` profile into its JSON text, as docker's CLI does
    (the engine never sees the path); the engine checks the rest."""
    from engine.errors import InvalidParameter
    from events.seccomp import BUILTIN, UNCONFINED, profile_option

    out = []
    for opt in values:
        key, sep, value = opt.partition("=")
        if key == "seccomp" and sep and value not in (UNCONFINED, BUILTIN):
            try:
                with open(value, "rb") as f:
                    opt = profile_option(value, f.read())
            except OSError as e:
                raise InvalidParameter(f"opening seccomp profile ({value}) failed: open "
                                       f"{value}: {(e.strerror or str(e)).lower()}") from None
            except ValueError as e:
                raise InvalidParameter(str(e)) from None
        out.append(opt)
    return tuple(out)


def _host_options(args: argparse.Namespace) -> dict[str, Any]:
    """The namespace, device, sysctl and tmpfs flags as HostConfig fields (docker's CLI)."""
    from engine.errors import InvalidParameter
    from events.hostopts import is_namespaced_sysctl, parse_device

    sysctls = {}
    for item in args.sysctl:
        key, sep, value = item.partition("=")
        if not sep or not is_namespaced_sysctl(key.strip()):
            raise InvalidParameter(f"sysctl '{item}' is not allowed")
        sysctls[key.strip()] = value
    tmpfs = {}
    for item in args.tmpfs:
        path, _, options = item.partition(":")
        tmpfs[path] = options
    try:
        devices = tuple(parse_device(d) for d in args.device)
    except ValueError as e:
        raise InvalidParameter(str(e)) from None
    return {
        "privileged": args.privileged, "tmpfs": tmpfs, "sysctls": sysctls, "devices": devices,
        "device_cgroup_rules": tuple(args.device_cgroup_rule), "group_add": tuple(args.group_add),
        "pid_mode": args.pid or "", "ipc_mode": args.ipc or "", "uts_mode": args.uts or "",
        "cgroupns_mode": args.cgroupns or "", "init": args.init, "runtime": args.runtime or "",
        "isolation": args.isolation or "",
    }


def _log_config(args: argparse.Namespace) -> LogConfig:
    """Build LogConfig from --log-driver/--log-opt as docker's CLI (parseLoggingOpts) does."""
    from engine.errors import InvalidParameter
    from events.specs import LogConfig

    opts = dict((item.split("=", 1) + [""])[:2] for item in args.log_opt)
    if args.log_driver == "none" and opts:
        raise InvalidParameter("invalid logging opts for driver none")
    return LogConfig(type=args.log_driver or "json-file", config=opts)


def _ulimit(text: str) -> Ulimit:
    """Parse docker's `--ulimit name=soft[:hard]` (go-units' format)."""
    from engine.errors import InvalidParameter
    from events.specs import Ulimit

    name, sep, limits = text.partition("=")
    soft, _, hard = limits.partition(":")
    try:
        return Ulimit(name=name, soft=int(soft), hard=int(hard or soft))
    except ValueError:
        raise InvalidParameter(f"invalid argument \"{text}\" for \"--ulimit\" flag: "
                               f"invalid ulimit argument: {text}") from None


def resource_options(args: argparse.Namespace) -> dict[str, Any]:
    """The resource flags `create`, `run` and `update` share, as HostConfig fields."""
    from commands.options import parse_bytes, parse_cpus

    def size(text: str | None) -> int:
        return -1 if text == "-1" else parse_bytes(text) if text else 0

    return {
        "memory": size(args.memory), "memory_swap": size(args.memory_swap),
        "memory_reservation": size(args.memory_reservation),
        "nano_cpus": parse_cpus(args.cpus) if args.cpus else 0,
        "cpu_shares": args.cpu_shares or 0, "cpu_period": args.cpu_period or 0,
        "cpu_quota": args.cpu_quota or 0, "cpuset_cpus": args.cpuset_cpus or "",
        "cpuset_mems": args.cpuset_mems or "", "blkio_weight": args.blkio_weight or 0,
    }


def add_resource_flags(p: argparse.ArgumentParser) -> None:
    """Add docker's resource flags common to `create`/`run` and `update`."""
    p.add_argument("-m", "--memory")
    p.add_argument("--memory-swap")
    p.add_argument("--memory-reservation")
    p.add_argument("--pids-limit", type=int)
    p.add_argument("--cpus")
    p.add_argument("-c", "--cpu-shares", type=int)
    p.add_argument("--cpu-period", type=int)
    p.add_argument("--cpu-quota", type=int)
    p.add_argument("--cpuset-cpus")
    p.add_argument("--cpuset-mems")
    p.add_argument("--blkio-weight", type=int)


def container_spec(args: argparse.Namespace) -> tuple[ContainerConfig, HostConfig]:
    """Build Config and HostConfig from docker-run-style flags."""
    import os

    from commands.mountopts import parse_mount, split_volumes
    from commands.options import parse_bytes, parse_labels, parse_publish
    from events.caps import normalize_caps
    from events.specs import ContainerConfig, HostConfig, PortBinding
    from moor.api.mounts import check_bind_sources

    bindings: dict[str, list[PortBinding]] = {}
    for spec in args.publish:
        for port, binding in parse_publish(spec):
            bindings.setdefault(port, []).append(binding)
    binds, volumes = split_volumes(args.volume, os.getcwd())  # the CLI resolves "./x"
    config = ContainerConfig(
        image=args.image,
        volumes=volumes,
        cmd=tuple(args.command) or None,
        entrypoint=(args.entrypoint,) if args.entrypoint is not None else None,
        env=tuple(args.env),
        labels=parse_labels(args.label),
        working_dir=args.workdir or "",
        user=args.user or "",
        stop_signal=args.stop_signal or "",
        stop_timeout=args.stop_timeout,
        hostname=args.hostname or "",
        exposed_ports=tuple(bindings),
        **_stdio_options(args),
    )
    host = HostConfig(
        network_mode=args.network,
        port_bindings={k: tuple(v) for k, v in bindings.items()},
        restart_policy=_restart_policy(args.restart),
        auto_remove=args.rm,
        pids_limit=max(args.pids_limit or 0, 0),
        memory_swappiness=-1 if args.memory_swappiness is None else args.memory_swappiness,
        oom_kill_disable=args.oom_kill_disable,
        ulimits=tuple(_ulimit(u) for u in args.ulimit),
        shm_size=parse_bytes(args.shm_size) if args.shm_size else 0,
        **resource_options(args),
        # As docker's CLI sends them: upper-cased, CAP_-prefixed, deduplicated, sorted.
        cap_add=tuple(sorted(normalize_caps(args.cap_add))),
        cap_drop=tuple(sorted(normalize_caps(args.cap_drop))),
        security_opt=_security_opts(args.security_opt),
        readonly_rootfs=args.read_only,
        **_host_options(args),
        log_config=_log_config(args),
        binds=binds, mounts=tuple(parse_mount(m) for m in args.mount),
        volumes_from=tuple(args.volumes_from),
    )
    check_bind_sources(host)
    return config, host


def _attaches(args: argparse.Namespace) -> bool:
    """`run -i`/`-t` without `-d` attaches this terminal (plain `moor run` stays detached)."""
    return (args.interactive or args.tty) and not getattr(args, "detach", False)


def _stdio_options(args: argparse.Namespace) -> dict[str, bool]:
    """Config's TTY and stdin fields as the docker CLI sets them for -i, -t and -d."""
    attached = _attaches(args)
    return {"tty": args.tty, "open_stdin": args.interactive,
            "stdin_once": args.interactive and attached,
            "attach_stdin": args.interactive and attached, "attach_stdout": attached,
            "attach_stderr": attached}


def networking(args: argparse.Namespace) -> Networking | None:
    """The networking flags as the docker CLI sends them, read by the API's one parser."""
    from moor.api.netcreate import networking_spec

    endpoint: dict[str, Any] = {}
    if args.ip:
        endpoint["IPAMConfig"] = {"IPv4Address": args.ip}
    if args.network_alias:
        endpoint["Aliases"] = args.network_alias
    if args.mac_address:
        endpoint["MacAddress"] = args.mac_address
    body = {"HostConfig": {"Dns": args.dns, "DnsSearch": args.dns_search,
                           "DnsOptions": args.dns_option, "ExtraHosts": args.add_host,
                           "Links": args.link},
            "NetworkingConfig": {"EndpointsConfig": {args.network: endpoint}}}
    return networking_spec(body, args.network)


def _create(args: argparse.Namespace) -> int:
    config, host = container_spec(args)
    print(_client(args).create(config, host, name=args.name or "",
                               networking=networking(args)))
    return 0


def _run(args: argparse.Namespace) -> int:
    config, host = container_spec(args)  # a bad flag fails before Redis is opened
    net = networking(args)
    client = _client(args)
    cid = client.create(config, host, name=args.name or "", networking=net)
    if not _attaches(args):
        client.start(cid)
        print(cid)
        return 0
    return _start_attached(client, cid, args)


def _start_attached(client: Client, ref: str, args: argparse.Namespace) -> int:
    """Start, then attach with the output since the start (`run -it`, `start -ai`)."""
    from moor.attachcli import attach_to
    from projections.stream import tail_id

    after = tail_id(client.redis, client.keys)
    cid = client.start(ref)
    return attach_to(client, cid, after, stdin=args.interactive,
                     keys_text=args.detach_keys or "", replay=True)


def _start(args: argparse.Namespace) -> int:
    if not (args.attach or args.interactive):
        return _each(args, lambda c, r: c.start(r))
    if len(args.containers) > 1:
        print_error("you cannot start and attach multiple containers at once")
        return 1
    return _start_attached(_client(args), args.containers[0], args)


def _each(args: argparse.Namespace, action: Action) -> int:
    """Apply an action to every named container; print each, report errors like docker."""
    from engine.errors import MoorError

    client = _client(args)
    status = 0
    for ref in args.containers:
        try:
            action(client, ref)
        except MoorError as err:
            if err.exit_code != 0:
                print_error(err.message)
                status = 1
                continue
            # 304 (already running / already stopped): Docker's CLI prints it as done.
        print(ref)
    return status


def _each_with(action: Callable[[argparse.Namespace], Action]
               ) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return _each(args, action(args))
    return run


def _update(args: argparse.Namespace) -> int:
    """`moor update`: each container takes the flags given (the rest unchanged)."""
    from commands import schema as c
    from events.specs import HostConfig

    resources = HostConfig(**resource_options(args))
    policy = _restart_policy(args.restart) if args.restart else None
    if resources == HostConfig() and policy is None and args.pids_limit is None:
        print_error("you must provide one or more flags when using this command")
        return 1

    def action(client: Client, ref: str) -> object:
        return client.submit(c.UpdateContainer(ref=ref, resources=resources,
                                               pids_limit=args.pids_limit,
                                               restart_policy=policy))
    return _each(args, action)


def _rename(args: argparse.Namespace) -> int:
    _client(args).rename(args.container, args.new_name)
    return 0


def add_container_flags(p: argparse.ArgumentParser) -> None:
    """Add docker-run-style flags (shared by create and run)."""
    p.add_argument("--name")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-l", "--label", action="append", default=[])
    p.add_argument("-p", "--publish", action="append", default=[])
    p.add_argument("--network", default="bridge")
    p.add_argument("--ip", help="the IPv4 address on --network")
    p.add_argument("--network-alias", action="append", default=[])
    p.add_argument("--mac-address")
    p.add_argument("--dns", action="append", default=[])
    p.add_argument("--dns-search", action="append", default=[])
    p.add_argument("--dns-option", action="append", default=[])
    p.add_argument("--add-host", action="append", default=[], help="NAME:IP")
    p.add_argument("--link", action="append", default=[], help="NAME[:ALIAS]")
    add_resource_flags(p)
    p.add_argument("--memory-swappiness", type=int)
    p.add_argument("--oom-kill-disable", action="store_true")
    p.add_argument("--ulimit", action="append", default=[])
    p.add_argument("--shm-size")
    p.add_argument("--log-driver", default="", help="json-file (default) or none")
    p.add_argument("--log-opt", action="append", default=[],
                   help="json-file: max-size, max-file, labels, env, tag")
    p.add_argument("--restart", default="no")
    p.add_argument("--rm", action="store_true")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--entrypoint")
    p.add_argument("--stop-signal")
    p.add_argument("--stop-timeout", type=int)
    p.add_argument("--hostname")
    p.add_argument("--cap-add", action="append", default=[])
    p.add_argument("--cap-drop", action="append", default=[])
    p.add_argument("--security-opt", action="append", default=[])
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--tmpfs", action="append", default=[])
    p.add_argument("-v", "--volume", action="append", default=[],
                   help="bind or volume: [SOURCE:]TARGET[:MODE]")
    p.add_argument("--mount", action="append", default=[],
                   help="type=bind|volume|tmpfs,source=...,target=...[,readonly]")
    p.add_argument("--volumes-from", action="append", default=[])
    p.add_argument("--sysctl", action="append", default=[])
    p.add_argument("--device", action="append", default=[])
    p.add_argument("--device-cgroup-rule", action="append", default=[])
    p.add_argument("--group-add", action="append", default=[])
    p.add_argument("--pid")
    p.add_argument("--ipc")
    p.add_argument("--uts")
    p.add_argument("--cgroupns")
    p.add_argument("--init", action="store_true")
    p.add_argument("--runtime")
    p.add_argument("--isolation")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("--detach-keys")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)


def _stop_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", type=int, default=None)
    p.add_argument("-s", "--signal")


def _no_flags(p: argparse.ArgumentParser) -> None:
    """pause and unpause take no flags of their own."""


def _kill_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="SIGKILL")


def _rm_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true")
    p.add_argument("-v", "--volumes", action="store_true",
                   help="remove the anonymous volumes of the containers too")


# Each verb: (help, its flags, the client call it makes for one container).
_VERBS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                        Callable[[argparse.Namespace], Action]]] = {
    "stop": ("stop containers", _stop_flags,
             lambda a: lambda c, r: c.stop(r, a.time, a.signal or "")),
    "restart": ("restart containers", _stop_flags,
                lambda a: lambda c, r: c.restart(r, a.time, a.signal or "")),
    "kill": ("send a signal (default SIGKILL)", _kill_flags,
             lambda a: lambda c, r: c.kill(r, a.signal)),
    "rm": ("remove containers", _rm_flags,
           lambda a: lambda c, r: c.remove(r, a.force, volumes=a.volumes)),
    "pause": ("pause containers (freeze their processes)", _no_flags,
              lambda a: lambda c, r: c.pause(r)),
    "unpause": ("unpause containers", _no_flags, lambda a: lambda c, r: c.unpause(r)),
}


def register(sub: Any) -> None:
    """Add the lifecycle subcommands to `moor`'s parser."""
    p = sub.add_parser("create", help="create a container")
    add_container_flags(p)
    p.set_defaults(func=guard(_create))
    p = sub.add_parser("run", help="create and start a container (detached unless -i/-t)")
    p.add_argument("-d", "--detach", action="store_true", help="with -i/-t: do not attach")
    add_container_flags(p)
    p.set_defaults(func=guard(_run))
    p = sub.add_parser("start", help="start containers")
    p.add_argument("-a", "--attach", action="store_true", help="attach this terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="attach stdin too")
    p.add_argument("--detach-keys")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=guard(_start))
    for name, (help_, flags, action) in _VERBS.items():
        p = sub.add_parser(name, help=help_)
        flags(p)
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(func=guard(_each_with(action)))
    p = sub.add_parser("update", help="change the resources or restart policy of containers")
    add_resource_flags(p)
    p.add_argument("--restart")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=guard(_update))
    p = sub.add_parser("rename", help="rename a container")
    p.add_argument("container")
    p.add_argument("new_name")
    p.set_defaults(func=guard(_rename))
