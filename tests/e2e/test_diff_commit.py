"""`docker diff` and `docker commit` through the real docker CLI.

diff reads the container's overlay upper dir (added, changed, deleted through a whiteout),
on a running and on a stopped container; commit makes an image that runs, holds the
written file, takes `--change` lines and is a recorded image fact (with the pause around
it) in `docker events`.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import Engine, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    api_fixtures,
    cid_of,
)

pytestmark = pytest.mark.privileged


docker_api, dk, tag = api_fixtures("diff-commit-api", "dc")


def _rmi(dk: DockerApi, *refs: str) -> None:
    dk.docker("rmi", "-f", *refs, check=False)


def test_diff_shows_added_changed_and_deleted(dk: DockerApi, tag: str) -> None:
    cid = cid_of(dk.docker("run", "-d", tag, "sh", "-c",
                           "echo new > /tmp/x && echo hi >> /etc/motd && rm /etc/passwd "
                           "&& mkdir -p /srv/d && touch /srv/d/f && sleep 300"))
    expected = ["C /etc", "C /etc/motd", "D /etc/passwd", "A /srv", "A /srv/d",
                "A /srv/d/f", "C /tmp", "A /tmp/x"]

    def lines() -> list[str]:
        return sorted(dk.docker("diff", cid).stdout.split("\n")[:-1])

    wait_for(lambda: "A /tmp/x" in lines() and "A /srv/d/f" in lines(), 15,
                             "the writes to show")
    got = lines()
    assert set(expected) - {"C /etc"} <= set(got), got
    assert not [line for line in got if "hostname" in line or "/proc" in line], got
    dk.docker("stop", "-t", "0", cid)
    assert lines() == got  # the upper dir outlives the process
    raw = json.loads(dk.http("GET", f"/containers/{cid}/changes")[2])
    assert {"Path": "/etc/passwd", "Kind": 2} in raw and {"Path": "/tmp/x", "Kind": 1} in raw
    dk.docker("rm", cid)


def test_commit_runs_with_the_file_and_the_change(dk: DockerApi, tag: str,
                                                  engine: Engine) -> None:
    cid = cid_of(dk.docker("run", "-d", tag, "sh", "-c",
                           "echo committed > /tmp/x && rm /etc/motd && sleep 300"))
    wait_for(lambda: "A /tmp/x" in dk.docker("diff", cid).stdout, 15,
                             "the write")
    since = str(int(engine.redis.time()[0]) - 1)
    new = f"moorage-commit:{engine.token}"
    out = dk.docker("commit", "-m", "a message", "-a", "tester", "-c", 'CMD ["cat", "/tmp/x"]',
                    "-c", "ENV COMMITTED=yes", cid, new).stdout.strip()
    assert out.startswith("sha256:")
    assert dk.docker("inspect", "-f", "{{.State.Status}}", cid).stdout.strip() == "running"
    try:
        assert dk.docker("run", "--rm", new).stdout == "committed\n"  # the --change CMD
        assert dk.docker("run", "--rm", new, "sh", "-c",
                         "echo $COMMITTED; test -e /etc/motd || echo gone").stdout == \
            "yes\ngone\n"
        info = json.loads(dk.docker("image", "inspect", new).stdout)[0]
        assert info["Id"] == out and info["Config"]["Cmd"] == ["cat", "/tmp/x"]
        # Docker's order: pause, image create, image tag, container commit, unpause.
        wanted = [f"container pause {cid} ", f"image create {out} {out}",
                  f"image tag {out} {new}", f"container commit {cid} {out}",
                  f"container unpause {cid} "]

        def mine() -> list[str]:
            events = dk.docker("events", "--since", since, "--until", "0s", "--format",
                               "{{.Type}} {{.Action}} {{.Actor.ID}} "
                               "{{index .Actor.Attributes \"imageID\"}}"
                               "{{if eq .Type \"image\"}}{{.Actor.Attributes.name}}{{end}}"
                               ).stdout.splitlines()
            return [e for e in events if (cid in e or out in e) and e.split()[:2] in (
                ["container", "pause"], ["image", "create"], ["image", "tag"],
                ["container", "commit"], ["container", "unpause"])]

        wait_for(lambda: mine() == wanted, 10, "Docker's commit events in docker events",
                 lambda: repr(mine()))
    finally:
        dk.docker("rm", "-f", cid)
        _rmi(dk, new)


def test_commit_of_a_stopped_container_without_a_tag(dk: DockerApi, tag: str) -> None:
    cid = cid_of(dk.docker("run", "-d", tag, "sh", "-c", "echo stopped > /root/s"))
    dk.docker("wait", cid)
    image_id = dk.docker("commit", "--change", "WORKDIR /root", cid).stdout.strip()
    try:
        assert dk.docker("run", "--rm", image_id, "cat", "s").stdout == "stopped\n"
        bad = dk.docker("commit", "-c", "RUN true", cid, check=False)
        assert bad.returncode != 0 and "RUN is not a valid change command" in bad.stderr
        bad = dk.docker("commit", cid, "Not/Lower", check=False)
        assert bad.returncode != 0 and "invalid reference format" in bad.stderr
        fresh = cid_of(dk.docker("create", tag, "true"))
        assert dk.http("GET", f"/containers/{fresh}/changes")[2] == b"null\n"
        dk.docker("rm", fresh)
    finally:
        dk.docker("rm", "-f", cid)
        _rmi(dk, image_id)


def test_moor_diff_and_commit(dk: DockerApi, tag: str, engine: Engine) -> None:
    cid = cid_of(dk.docker("run", "-d", tag, "sh", "-c", "echo cli > /tmp/c; sleep 300"))
    wait_for(lambda: "A /tmp/c" in engine.moor("diff", cid).stdout, 15, "moor diff to show it")
    new = f"moorage-cli:{engine.token}"
    image_id = engine.moor("commit", "-m", "from moor", "-c", "CMD cat /tmp/c", cid,
                           new).stdout.strip()
    try:
        assert image_id.startswith("sha256:")
        assert dk.docker("run", "--rm", new).stdout == "cli\n"
    finally:
        dk.docker("rm", "-f", cid)
        _rmi(dk, new)
