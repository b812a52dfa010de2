"""Every running-container action is a recorded fact: `docker events` shows Docker's action
for each (issue 10's "Events" acceptance), in order, and the audit replay of the journal
rebuilds the live state after all of them.

One container goes through exec, pause and unpause, update, top, cp both ways, commit,
stop and prune, driven by the real docker CLI against moorage's socket.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Engine, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    api_fixtures,
    cid_of,
)

pytestmark = pytest.mark.privileged


docker_api, dk, tag = api_fixtures("action-events-api", "actions")


def test_docker_events_show_each_action_and_the_replay_verifies(
        dk: DockerApi, tag: str, engine: Engine, tmp_path: Path) -> None:
    since = str(int(engine.redis.time()[0]) - 1)
    cid = cid_of(dk.docker("run", "-d", tag, "sleep", "300"))
    assert dk.docker("exec", cid, "sh", "-c", "echo hi > /tmp/hi").returncode == 0
    dk.docker("pause", cid)
    dk.docker("unpause", cid)
    dk.docker("update", "--memory", "64m", "--memory-swap", "128m", cid)
    dk.docker("top", cid)
    local = tmp_path / "in.txt"
    local.write_text("in\n")
    dk.docker("cp", str(local), f"{cid}:/tmp/in.txt")
    dk.docker("cp", f"{cid}:/tmp/hi", str(tmp_path / "hi"))
    assert (tmp_path / "hi").read_text() == "hi\n"
    image = dk.docker("commit", cid).stdout.strip()
    dk.docker("stop", "-t", "0", cid)
    dk.docker("container", "prune", "-f", "--filter", f"label=nothing-{engine.token}")
    dk.docker("rm", cid)
    dk.docker("rmi", image)

    wanted = ["create", "network connect", "start", "exec_create", "exec_start",
              "exec_die", "pause", "unpause", "update", "top", "extract-to-dir",
              "archive-path", "pause", "commit", "unpause", "kill", "network disconnect",
              "die", "stop", "destroy"]

    def seen() -> list[str]:
        # --until in whole seconds excludes the current one: the CLI rounds it down.
        lines = dk.docker("events", "--since", since, "--until", "0s", "--format",
                          "{{.Type}} {{.Action}} {{.Actor.ID}} "
                          "{{index .Actor.Attributes \"container\"}}").stdout.splitlines()
        actions = []
        for line in lines:
            kind, rest = line.split(" ", 1)
            if cid not in rest:
                continue
            action = rest.split(" ")[0].rstrip(":")  # "exec_start: sh -c ..." -> exec_start
            actions.append(f"network {action}" if kind == "network" else action)
        return actions

    wait_for(lambda: seen() == wanted, 15, "every action in docker events",
             lambda: repr(seen()))
    engine.moor("replay", "--verify")
