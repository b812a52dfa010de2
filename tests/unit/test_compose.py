"""docker-compose.dev.yml is a valid compose file whose services run real `moor` commands."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from moor.cli import build_parser

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.dev.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Return the `moor` subcommands and their parsers, from the CLI's own parser."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("moor has no subcommands")


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(word) for word in command]


def test_the_services_and_their_roles(compose: dict[str, Any]) -> None:
    services = {name: s for name, s in compose["services"].items() if not s.get("profiles")}
    assert set(services) == {"redis", "reducer", "worker", "api"}
    redis = services["redis"]
    assert str(redis["image"]).startswith("redis:7")
    words = command_of(redis)
    assert words[0] == "redis-server" and words[words.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    worker = services["worker"]
    assert worker["privileged"] is True
    assert worker["pid"] == "host" and worker["network_mode"] == "host"
    for name in ("reducer", "worker", "api"):
        service = services[name]
        assert "image" in service or "build" in service, name
        assert service["environment"]["MOOR_REDIS_URL"].startswith("redis://"), name
        assert "redis" in service["depends_on"], name


@pytest.mark.parametrize("name", ["reducer", "worker", "api"])
def test_each_service_runs_an_existing_moor_subcommand(compose: dict[str, Any],
                                                       name: str) -> None:
    words = command_of(compose["services"][name])
    assert words[0] == "moor", words
    assert words[1] in subcommands(), f"`moor {words[1]}` does not exist"
    args = build_parser().parse_args(words[1:])  # exits (SystemExit) on an unknown flag
    assert args.command == name
    if name == "api":
        assert args.socket.startswith("/var/lib/moorage/")
        volumes = compose["services"]["api"]["volumes"]
        assert any(v.split(":")[1] == "/var/lib/moorage" for v in volumes)


def test_the_cluster_profile_runs_a_reducer_and_a_worker_per_shard(
        compose: dict[str, Any]) -> None:
    services = {name: s for name, s in compose["services"].items()
                if "cluster" in s.get("profiles", ())}
    nodes = [s for name, s in services.items() if name.startswith("redis-node-")]
    assert len(nodes) == 6
    for node in nodes:
        words = command_of(node)
        assert words[words.index("--cluster-enabled") + 1] == "yes"
    init = " ".join(services["cluster-init"]["entrypoint"])
    assert "--cluster create" in init and "--cluster-replicas 1" in init
    shards = {}
    for name, service in services.items():
        words = command_of(service) if "command" in service else []
        if words[:1] != ["moor"]:
            continue
        args = build_parser().parse_args(words[1:])  # exits on an unknown flag
        env = service["environment"]
        assert env["MOOR_SHARDS"] == "3" and "," in env["MOOR_REDIS_URL"], name
        assert env["MOOR_QUEUE_URL"].startswith("redis://"), name
        if args.command in ("reducer", "worker"):
            shards.setdefault(args.command, set()).add(args.shard)
    assert shards == {"reducer": {"0", "1", "2"}, "worker": {"0", "1", "2"}}


def test_docker_compose_accepts_it_when_installed() -> None:
    docker = shutil.which("docker")
    plugin = docker is not None and subprocess.run(
        [docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0
    if not plugin:
        pytest.skip("the docker compose plugin is not installed (PyYAML checks ran instead)")
    assert docker is not None
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
