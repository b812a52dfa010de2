"""`moor up` serves Prometheus metrics: scraped over HTTP during a real workload, the
counters move and the histograms fill, as many as the journal (read back from Redis) says.

The engine here is a whole `moor up` (reducer, worker and API as its children) on the
session's Redis under keys of its own, built and torn down with the e2e helpers: its own
data root, bridge and subnet, the busybox image, and the session teardown's leak checks.
"""

from __future__ import annotations

import collections
import os
import re
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from events import model as e
from tests.conftest import RedisServer
from tests.e2e.conftest import (
    REPO,
    Engine,
    _networks,
    _teardown,
    moor_run,
    new_engine,
    require_busybox,
    wait_for,
)
from tests.imagebuild import busybox_rootfs_tar

pytestmark = pytest.mark.privileged

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@contextmanager
def engine_up(redis_server: RedisServer) -> Iterator[tuple[Engine, str]]:
    """Run `moor up` as an isolated engine; yield it and the metrics URL it printed."""
    from workers.net.netconf import BridgeConfig

    busybox = require_busybox()
    token = secrets.token_hex(3)
    eng = new_engine(redis_server.url, token, f"moor-e2e-m-{token}-", f"moore2em{token}",
                     f"moorm{token}", "e2e-metrics")
    log = os.path.join(eng.workdir, "up.log")
    for name in ("worker", "reducer"):  # the children write into moor up's output
        os.symlink(log, os.path.join(eng.workdir, f"{name}.log"))
    try:
        with open(log, "ab") as out:
            up = subprocess.Popen([sys.executable, "-m", "moor.cli", "up"], cwd=REPO,
                                  env=eng.env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT)
        # The teardown stops "the reducer" and "the worker" by PID: both are moor up's.
        eng.reducer = eng.worker = up

        def printed() -> str | None:
            if up.poll() is not None:
                raise AssertionError(f"moor up exited {up.returncode}\n{eng.log_tail('worker')}")
            with open(log) as text:
                found = re.search(r"^moor up: metrics: (http://127\.0\.0\.1:\d+/metrics)$",
                                  text.read(), re.M)
            return found.group(1) if found else None
        url = wait_for(printed, 60, "moor up to print the metrics address",
                       lambda: eng.log_tail("worker"))
        wait_for(lambda: _networks(eng), 60, "the reducer to define the default network",
                 lambda: eng.log_tail("worker"))
        wait_for(lambda: eng.redis.smembers(f"rq:workers:{eng.keys.queue}"), 60,
                 "the worker to register with rq", lambda: eng.log_tail("worker"))
        tar = busybox_rootfs_tar(os.path.join(eng.workdir, "busybox.tar"), busybox)
        eng.image_id = eng.moor("image", "import", tar, "busybox:latest").stdout.strip()
        yield eng, url
    finally:
        problems = _teardown(eng, BridgeConfig(name=eng.bridge, subnet=eng.subnet))
        assert not problems, "moor up engine teardown: " + "; ".join(problems)


def scrape(url: str) -> Samples:
    """GET /metrics and parse it with prometheus_client's own parser."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_moor_up_serves_metrics_that_move_with_a_workload(redis_server: RedisServer) -> None:
    with engine_up(redis_server) as (eng, url):
        cursor = eng.last_event_id()
        before = scrape(url)

        def decided(samples: Samples) -> float:  # commands decided since `before`
            return total(samples, "moor_commands_decided_total") - total(
                before, "moor_commands_decided_total")
        assert value(before, "moor_reducer_leader") == 1
        assert value(before, "moor_containers", state="running") == 0

        web = moor_run(eng, "--name", f"m1-{eng.token}", "busybox", "sleep", "300")
        other = moor_run(eng, "busybox", "sleep", "300")
        assert eng.moor("exec", web, "echo", "hi").stdout == "hi\n"
        refused = eng.moor("rm", other, check=False)  # running: refused, 409
        assert refused.returncode != 0 and "stop the container" in refused.stderr.lower()
        during = scrape(url)  # while both run
        assert value(during, "moor_containers", state="running") == 2
        assert ("moor_reducer_lag_entries", (("inbox", "control"),)) in during

        eng.moor("stop", "-t", "1", web)
        eng.moor("rm", web)
        eng.moor("rm", "-f", other)
        after: Samples = {}
        records: list[e.EventRecord] = []

        def caught_up() -> bool:
            # The journal first, then the scrape: the metrics count a batch just after
            # its write lands, and late reports (a removal's) may still be coming.
            records[:] = [r for _, r in eng.events(after=cursor)]
            after.update(scrape(url))
            return decided(after) == len({r.meta.command_id for r in records}) \
                and value(after, "moor_containers", state="running") == 0 \
                and not any(n for (m, _), n in after.items() if m == "moor_containers")
        wait_for(caught_up, 10, "the metrics to count what the journal holds",
                 lambda: f"decided {decided(after)}, journal {len(records)} records")

    # Counters moved, and by what the journal holds.
    kinds = collections.Counter(type(r.event).__name__ for r in records)
    assert kinds["ContainerStarted"] == 2 and kinds["ExecDied"] == 1, kinds
    for kind in ("CreateContainer", "StartContainer", "CreateExec", "StartExec",
                 "ReportProcessStarted", "RemoveContainer"):
        assert delta(after, before, "moor_commands_decided_total", type=kind) >= 1, kind
    assert delta(after, before, "moor_commands_received_total", type="CreateContainer") == 2
    rejected = collections.Counter((r.event.command, str(r.event.status)) for r in records
                                   if isinstance(r.event, e.CommandRejected))
    assert rejected[("RemoveContainer", "409")] == 1
    assert delta(after, before, "moor_commands_rejected_total", type="RemoveContainer",
                 status="409") == 1
    assert delta(after, before, "moor_exec_sessions_started_total") == kinds["ExecStarted"] == 1
    assert delta(after, before, "moor_exec_sessions_finished_total") == 1
    # Histograms filled: one observation per step per start, each in a finite bucket.
    for step in ("mount", "sandbox", "endpoint", "spawn"):
        count = delta(after, before, "moor_start_step_seconds_count", step=step)
        assert count == 2, step
        assert delta(after, before, "moor_start_step_seconds_bucket", step=step,
                     le="10.0") == 2, step
        assert delta(after, before, "moor_start_step_seconds_sum", step=step) >= 0
    assert delta(after, before, "moor_start_seconds_sum") > 0
    folds = delta(after, before, "moor_reducer_fold_seconds_count")
    assert folds >= 1 and delta(after, before, "moor_reducer_fold_seconds_bucket",
                                le="+Inf") == folds
    assert delta(after, before, "moor_reducer_batch_commands_sum") >= decided(after)
    assert value(after, "moor_reducer_lease_changes_total", change="acquired") == 1
    assert value(after, "moor_containers", state="running") == 0

