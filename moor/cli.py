"""The `moor` command line: lifecycle commands on the client, reads on the projections."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from commands.client import Client
from commands.options import parse_bytes, parse_cpus, parse_labels, parse_publish
from engine.errors import MoorError
from engine.keys import Keys, keys_for
from events.specs import ContainerConfig, HostConfig, PortBinding, RestartPolicy

__all__ = ["main"]


def connect(args: argparse.Namespace) -> tuple[Any, Keys]:
    """Open Redis (MOOR_REDIS_URL, else the embedded server) and the shard's keys."""
    import redis

    from engine import config
    from moor.embedded import resolve_redis_url

    url = resolve_redis_url(args.redis_url)
    return redis.Redis.from_url(url), keys_for(prefix=config.key_prefix())


def _client(args: argparse.Namespace) -> Client:
    r, keys = connect(args)
    return Client(r, keys, actor=args.actor, reason=args.reason, timeout=args.timeout)


# --- lifecycle -------------------------------------------------------------------------

def _restart_policy(text: str) -> RestartPolicy:
    name, _, count = text.partition(":")
    return RestartPolicy(name=name, maximum_retry_count=int(count) if count.isdigit() else 0)


def container_spec(args: argparse.Namespace) -> tuple[ContainerConfig, HostConfig]:
    """Build Config and HostConfig from docker-run-style flags."""
    bindings: dict[str, list[PortBinding]] = {}
    for spec in args.publish:
        for port, binding in parse_publish(spec):
            bindings.setdefault(port, []).append(binding)
    config = ContainerConfig(
        image=args.image,
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
    )
    host = HostConfig(
        network_mode=args.network,
        port_bindings={k: tuple(v) for k, v in bindings.items()},
        restart_policy=_restart_policy(args.restart),
        auto_remove=args.rm,
        memory=parse_bytes(args.memory) if args.memory else 0,
        pids_limit=args.pids_limit or 0,
        nano_cpus=parse_cpus(args.cpus) if args.cpus else 0,
    )
    return config, host


def cmd_create(args: argparse.Namespace) -> int:
    config, host = container_spec(args)
    print(_client(args).create(config, host, name=args.name or ""))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    client = _client(args)
    config, host = container_spec(args)
    cid = client.create(config, host, name=args.name or "")
    client.start(cid)
    print(cid)
    return 0


def _each(args: argparse.Namespace, action: Callable[[Client, str], object]) -> int:
    """Apply an action to every named container; print each, report errors like docker."""
    client = _client(args)
    status = 0
    for ref in args.containers:
        try:
            action(client, ref)
            print(ref)
        except MoorError as err:
            print(f"Error response from daemon: {err.message}", file=sys.stderr)
            status = 1
    return status


def add_container_flags(p: argparse.ArgumentParser) -> None:
    """Add docker-run-style flags (shared by create and run)."""
    p.add_argument("--name")
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("-l", "--label", action="append", default=[])
    p.add_argument("-p", "--publish", action="append", default=[])
    p.add_argument("--network", default="bridge")
    p.add_argument("-m", "--memory")
    p.add_argument("--pids-limit", type=int)
    p.add_argument("--cpus")
    p.add_argument("--restart", default="no")
    p.add_argument("--rm", action="store_true")
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--entrypoint")
    p.add_argument("--stop-signal")
    p.add_argument("--stop-timeout", type=int)
    p.add_argument("--hostname")
    p.add_argument("image")
    p.add_argument("command", nargs=argparse.REMAINDER)


def cmd_reducer(args: argparse.Namespace) -> int:
    """Run the single writer (standby until it holds the lease) until SIGTERM/SIGINT."""
    from engine.config import default_network
    from engine.reducer import Reducer

    r, keys = connect(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    reducer = Reducer(r, keys, lease_ms=args.lease_ms, batch=args.batch)
    failed: list[BaseException] = []

    def lead() -> None:
        try:
            reducer.run(stop)
        except BaseException as exc:  # a supervisor must see the failure: exit non-zero
            logging.getLogger("moorage.reducer").exception("reducer failed")
            failed.append(exc)

    thread = threading.Thread(target=lead, name="reducer")
    thread.start()
    if not args.no_default_network:
        try:
            Client(r, keys, actor="moor-reducer", timeout=30).define_network(default_network())
        except MoorError as err:
            logging.getLogger("moorage").warning("default network: %s", err.message)
    while thread.is_alive():
        thread.join(0.5)
    return 1 if failed else 0


# --- the parser -------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moor", description="event-sourced container engine")
    parser.add_argument("--redis-url", help="default: MOOR_REDIS_URL, else the embedded Redis")
    parser.add_argument("--actor", default=os.environ.get("MOOR_ACTOR", os.environ.get(
        "USER", "moor")), help="who asks (recorded with every command)")
    parser.add_argument("--reason", default="", help="why (recorded with every command)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("create", help="create a container")
    add_container_flags(p)
    p.set_defaults(func=cmd_create)
    p = sub.add_parser("run", help="create and start a container (detached)")
    p.add_argument("-d", "--detach", action="store_true", help="accepted; runs detach")
    add_container_flags(p)
    p.set_defaults(func=cmd_run)

    def lifecycle(name: str, help_: str, action: Callable[[argparse.Namespace], Callable[
            [Client, str], object]], extra: Callable[[argparse.ArgumentParser], None]) -> None:
        p = sub.add_parser(name, help=help_)
        extra(p)
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(func=lambda a: _each(a, action(a)))

    lifecycle("start", "start containers", lambda a: lambda c, r: c.start(r), lambda p: None)
    lifecycle("stop", "stop containers", lambda a: lambda c, r: c.stop(
        r, a.time, a.signal or ""), _stop_flags)
    lifecycle("restart", "restart containers", lambda a: lambda c, r: c.restart(
        r, a.time, a.signal or ""), _stop_flags)
    lifecycle("kill", "send a signal (default SIGKILL)", lambda a: lambda c, r: c.kill(
        r, a.signal), lambda p: _flag(p, "-s", "--signal", default="SIGKILL"))
    lifecycle("rm", "remove containers", lambda a: lambda c, r: c.remove(r, a.force),
              lambda p: _flag(p, "-f", "--force", action="store_true"))

    p = sub.add_parser("rename", help="rename a container")
    p.add_argument("container")
    p.add_argument("new_name")
    p.set_defaults(func=lambda a: (_client(a).rename(a.container, a.new_name), 0)[1])

    p = sub.add_parser("reducer", help="run the single writer (standby until it leads)")
    p.add_argument("--lease-ms", type=int, default=3000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--no-default-network", action="store_true")
    p.set_defaults(func=cmd_reducer)

    # Host-side commands run as their own program (nothing outside workers/ imports it).
    for name, help_ in (("worker", "run this host's worker (root)"),
                        ("image", "import, load, list and remove images on this host"),
                        ("images", "list images (moor image ls)"),
                        ("rmi", "remove images (moor image rm)"),
                        ("logs", "print a container's logs"),
                        ("api", "serve the Docker Engine API on a unix socket")):
        p = sub.add_parser(name, help=help_, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_host_command)

    p = sub.add_parser("up", help="embedded Redis + reducer + worker + Docker API socket")
    p.set_defaults(func=cmd_up)

    from moor import readcli as read_cli

    read_cli.register(sub, lambda: connect(_PARSED[-1]))
    return parser


_PARSED: list[argparse.Namespace] = []  # the read commands connect with the global flags
_HOST_ALIASES = {"images": ["image", "ls"], "rmi": ["image", "rm"]}


def _host_argv(args: argparse.Namespace) -> list[str]:
    head = ["--actor", args.actor, "--reason", args.reason]
    if args.redis_url:
        head = ["--redis-url", args.redis_url, *head]
    if args.command == "worker":
        return [sys.executable, "-m", "moor.worker",
                *(["--redis-url", args.redis_url] if args.redis_url else []), *args.rest]
    if args.command == "api":
        return [sys.executable, "-m", "moor.api.server",
                *(["--redis-url", args.redis_url] if args.redis_url else []), *args.rest]
    verb = _HOST_ALIASES.get(args.command, [args.command])
    return [sys.executable, "-m", "moor.hostcli", *head, *verb, *args.rest]


def _host_command(args: argparse.Namespace) -> int:
    argv = _host_argv(args)
    os.execv(argv[0], argv)
    return 1  # not reached


def cmd_up(args: argparse.Namespace) -> int:
    """Run the engine on this machine: embedded Redis, the reducer and a worker."""
    import subprocess

    from moor.embedded import resolve_redis_url

    env = dict(os.environ)
    env["MOOR_REDIS_URL"] = resolve_redis_url(args.redis_url)
    print(f"moor up: redis {env['MOOR_REDIS_URL']}", flush=True)
    children = [
        subprocess.Popen([sys.executable, "-m", "moor.cli", "reducer"], env=env),
        subprocess.Popen([sys.executable, "-m", "moor.worker"], env=env),
        subprocess.Popen([sys.executable, "-m", "moor.api.server"], env=env),
    ]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set() and all(child.poll() is None for child in children):
        stop.wait(0.5)
    for child in children:  # our own children, by PID
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    print("moor up: stopped", flush=True)
    return 0 if stop.is_set() else 1


def _flag(p: argparse.ArgumentParser, *names: str, **kw: Any) -> None:
    p.add_argument(*names, **kw)


def _stop_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", type=int, default=None)
    p.add_argument("-s", "--signal")


_HOST_COMMANDS = frozenset(("worker", "image", "images", "rmi", "logs", "api"))
_VALUED_GLOBALS = frozenset(("--redis-url", "--actor", "--reason", "--timeout"))


def _split_host_command(argv: list[str]) -> tuple[list[str], list[str]] | None:
    """Split `[globals] HOSTCMD rest...` into its head and the host program's arguments.

    argparse's REMAINDER does not take arguments that start with an option
    (`moor logs --tail 1 web`), so a host command's arguments are passed on untouched.
    """
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _VALUED_GLOBALS:
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            return (argv[:i + 1], argv[i + 1:]) if word in _HOST_COMMANDS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; Docker's error texts on stderr, non-zero exit on failure."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    split = _split_host_command(words)
    if split is not None:
        args = parser.parse_args(split[0])
        args.rest = split[1]
    else:
        args = parser.parse_args(words)
    _PARSED.append(args)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command == "reducer"
                        else logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except MoorError as err:
        print(f"Error response from daemon: {err.message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2)


if __name__ == "__main__":
    sys.exit(main())
