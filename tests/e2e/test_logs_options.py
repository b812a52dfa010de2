"""Log drivers and options through the real docker CLI: rotation, none, since/until, refusals.

Each check is what a user sees: the files on disk, `docker logs` output, and Docker 28's
`Error response from daemon: ...` lines.
"""

from __future__ import annotations

import glob
import os

import pytest

from tests.e2e.conftest import Engine, wait_for
from tests.e2e.dockerapi import (
    DockerApi,
    api_fixtures,
    cid_of,
    daemon_error,
    inspect,
)

pytestmark = pytest.mark.privileged


docker_api, dk, tag = api_fixtures("logs-api", "logs")


def test_rotation_keeps_max_file_files_and_logs_reads_the_latest(dk: DockerApi, tag: str) -> None:
    cid = cid_of(dk.docker(
        "run", "-d", "--log-opt", "max-size=1k", "--log-opt", "max-file=3", tag, "sh", "-c",
        "i=0; while [ $i -lt 400 ]; do echo line $i; i=$((i+1)); done"))
    assert dk.docker("wait", cid).stdout.strip() == "0"
    files = glob.glob(os.path.join(dk.engine.container_dir(cid), f"{cid}-json.log*"))
    assert sorted(os.path.basename(f) for f in files) == [
        f"{cid}-json.log", f"{cid}-json.log.1", f"{cid}-json.log.2"]
    for path in files:
        assert os.path.getsize(path) <= 1000 + 100, path  # Docker checks before each entry
    lines = dk.docker("logs", cid).stdout.splitlines()
    assert lines[-1] == "line 399"
    numbers = [int(line.split()[1]) for line in lines]
    assert numbers == list(range(numbers[0], 400)) and numbers[0] > 0
    assert dk.docker("logs", "--tail", "2", cid).stdout == "line 398\nline 399\n"
    assert inspect(dk, cid)["HostConfig"]["LogConfig"] == {
        "Type": "json-file", "Config": {"max-size": "1k", "max-file": "3"}}
    # Attached output follows the rotations, several passing between two reads. (It reads
    # the log: what rotates away before it is read is lost, unlike Docker's attach.)
    attached = dk.docker("run", "--log-opt", "max-size=1k", "--log-opt", "max-file=50",
                         tag, "sh", "-c", "i=0; while [ $i -lt 400 ]; do echo line $i; "
                         "i=$((i+1)); done").stdout
    assert attached.splitlines() == [f"line {i}" for i in range(400)]


def test_the_none_driver_keeps_nothing_and_logs_says_so(dk: DockerApi, tag: str) -> None:
    cid = cid_of(dk.docker("run", "-d", "--log-driver", "none", tag, "echo", "secret"))
    assert dk.docker("wait", cid).stdout.strip() == "0"
    for path in glob.glob(os.path.join(dk.engine.container_dir(cid), f"{cid}-json.log*")):
        assert os.path.getsize(path) == 0
    done = dk.docker("logs", cid, check=False)
    assert done.returncode == 1
    assert daemon_error(done) == ("Error response from daemon: configured logging driver "
                                  "does not support reading")
    doc = inspect(dk, cid)
    assert (doc["HostConfig"]["LogConfig"]["Type"], doc["LogPath"]) == ("none", "")


def test_since_until_timestamps_and_details(dk: DockerApi, tag: str) -> None:
    cid = cid_of(dk.docker("run", "-d", tag, "sh", "-c",
                           "echo a; sleep 1.5; echo b; sleep 1.5; echo c"))
    assert dk.docker("wait", cid).stdout.strip() == "0"
    stamped = dk.docker("logs", "-t", cid).stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["a", "b", "c"]
    when_b = stamped[1].split(" ", 1)[0]
    assert len(when_b) == len("2026-01-02T03:04:05.123456789Z")
    assert dk.docker("logs", "--since", when_b, cid).stdout == "b\nc\n"
    assert dk.docker("logs", "--until", when_b, cid).stdout == "a\n"
    assert dk.docker("logs", "--since", "1h", "--until", when_b, cid).stdout == "a\n"
    assert dk.docker("logs", "--since", "-1s", cid).stdout == ""  # future: nothing
    # No attrs: --details puts Docker's empty attrs field, one space, before each line.
    assert dk.docker("logs", "--details", cid).stdout == " a\n b\n c\n"
    both = dk.docker("logs", "--details", "-t", "--tail", "1", cid).stdout
    assert both.endswith("Z  c\n")


def test_details_show_the_chosen_labels_and_env(dk: DockerApi, tag: str) -> None:
    cid = cid_of(dk.docker("run", "-d", "--label", "app=web", "-e", "REGION=eu",
                           "--log-opt", "labels=app", "--log-opt", "env=REGION", tag,
                           "echo", "hi"))
    assert dk.docker("wait", cid).stdout.strip() == "0"
    assert dk.docker("logs", "--details", cid).stdout == "REGION=eu,app=web hi\n"
    assert dk.docker("logs", cid).stdout == "hi\n"


@pytest.mark.parametrize(("flags", "message"), [
    (("--log-driver", "syslog"), "logger: no log driver named 'syslog' is registered"),
    (("--log-driver", "nosuch"), "logger: no log driver named 'nosuch' is registered"),
    (("--log-opt", "max-szie=1k"), "unknown log opt 'max-szie' for json-file log driver"),
    (("--log-opt", "max-size=big"), "invalid size: 'big'"),
    (("--log-opt", "max-file=0"), "max-file cannot be less than 1"),
])
def test_bad_drivers_and_opts_are_refused_at_create(dk: DockerApi, tag: str,
                                                    flags: tuple[str, ...], message: str) -> None:
    done = dk.docker("create", *flags, tag, "true", check=False)
    assert done.returncode == 1
    assert daemon_error(done) == f"Error response from daemon: {message}"
    done = dk.docker("run", "-d", *flags, tag, "true", check=False)
    assert done.returncode == 125
    assert daemon_error(done) == f"docker: Error response from daemon: {message}"


def test_moor_cli_flags(engine: Engine) -> None:
    done = engine.moor("run", "-d", "--log-opt", "max-size=1k", "--log-opt", "max-file=2",
                       "busybox", "sh", "-c", "echo a; sleep 1.5; echo b")
    cid = done.stdout.strip().splitlines()[-1]
    engine.track(cid)
    assert engine.inspect(cid)["HostConfig"]["LogConfig"]["Config"] == {
        "max-size": "1k", "max-file": "2"}
    wait_for(lambda: engine.moor("logs", cid).stdout == "a\nb\n", 15, "both lines")
    stamped = engine.moor("logs", "-t", cid).stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["a", "b"]
    assert engine.moor("logs", "--since", stamped[1].split(" ", 1)[0], cid).stdout == "b\n"
    assert engine.moor("logs", "--details", cid).stdout == " a\n b\n"
    refused = engine.moor("create", "--log-driver", "journald", "busybox", check=False)
    assert refused.returncode != 0
    assert "logger: no log driver named 'journald' is registered" in refused.stderr
