"""The reducer's metrics: journal-derived timings (pure), the counters checked against the
journal read back from Redis (fakeredis), the lag gauges, the settings and the endpoint."""

from __future__ import annotations

import collections
import time
import urllib.request
from typing import Any

import fakeredis
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from commands import schema as c
from commands.client import Client, new_container_id
from commands.codec import CODEC
from engine import metrics_http
from engine.config import metrics_addr
from engine.core.evolve import fold
from engine.core.state import status_of
from engine.errors import Conflict, InvalidParameter
from engine.metrics import STATES, Buckets
from engine.metrics_journal import Observation, StartClock, failure_step
from engine.reducer import Reducer
from events import model as e
from events.specs import Endpoint
from tests.harness import (
    ReducerThread,
    SagaDriver,
    all_records,
    busybox,
    cleanup,
    drive,
    fresh_keys,
    seed,
)

CID = "a" * 64
T0 = 1_800_000_000_000_000_000


def rec(event: e.Event, at_ms: float, cid: str = CID) -> e.EventRecord:
    return e.EventRecord(meta=e.EventMeta(container_id=cid, command_id="x",
                                          at=T0 + int(at_ms * 1_000_000)), event=event)


def saga(gen: int, t: float = 0) -> list[e.EventRecord]:
    ep = Endpoint(network="bridge", ip_address="10.1.0.2", prefix_len=16, gateway="10.1.0.1",
                  mac_address="02:42:0a:01:00:02")
    return [rec(e.StartInitiated(generation=gen), t),
            rec(e.RootfsMounted(generation=gen), t + 10),
            rec(e.SandboxCreated(generation=gen), t + 15),
            rec(e.NetworkConnected(generation=gen, endpoint=ep), t + 17),
            rec(e.ContainerStarted(generation=gen, pid=9, started_at=1), t + 47)]


def observe(clock: StartClock, records: list[e.EventRecord]) -> list[Observation]:
    return [o for r in records for o in clock.note(r)]


# --- journal-derived, pure ----------------------------------------------------------------

def test_start_clock_times_each_step_from_the_records_timestamps() -> None:
    found = observe(StartClock(), saga(1))
    assert [(o.step, round(o.seconds, 6)) for o in found] == [
        ("mount", 0.010), ("sandbox", 0.005), ("endpoint", 0.002), ("spawn", 0.030),
        ("start", 0.047)]


def test_start_clock_skips_other_generations_unknown_starts_and_failed_ones() -> None:
    clock = StartClock()
    late = rec(e.RootfsMounted(generation=1), 5)  # an older attempt's report
    assert observe(clock, [rec(e.StartInitiated(generation=2), 0), late]) == []
    failed = [rec(e.StartFailed(generation=2, step="endpoint", error="x", exit_code=128), 9),
              rec(e.RootfsMounted(generation=2), 10)]
    assert observe(clock, failed) == [] and len(clock) == 0
    assert observe(StartClock(), saga(3)[1:]) == []  # taken over mid-saga: no start to time


def test_start_clock_never_reports_a_negative_duration() -> None:
    records = saga(1)
    skewed = rec(e.RootfsMounted(generation=1), -3)  # another host's clock, a little behind
    found = observe(StartClock(), [records[0], skewed])
    assert found == [Observation("mount", 0.0)]


def test_failure_step_names_the_host_job() -> None:
    assert failure_step(e.StartFailed(generation=1, step="spawn", error="", exit_code=1)) \
        == "spawn"
    assert failure_step(e.RemovalFailed(error="busy")) == "remove"
    assert failure_step(e.FreezeFailed(generation=1, frozen=True, error="")) == "pause"
    assert failure_step(e.ContainerStopped(generation=1)) is None


# --- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    (None, ("127.0.0.1", 0)), ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("[::1]:9464", ("::1", 9464)), ("off", None), ("OFF", None)])
def test_metrics_addr(monkeypatch: pytest.MonkeyPatch, text: str | None,
                      want: tuple[str, int] | None) -> None:
    if text is None:
        monkeypatch.delenv("MOOR_METRICS_ADDR", raising=False)
    else:
        monkeypatch.setenv("MOOR_METRICS_ADDR", text)
    assert metrics_addr() == want


@pytest.mark.parametrize("text", ["localhost:9464", "127.0.0.1", "127.0.0.1:http",
                                  "127.0.0.1:70000"])
def test_metrics_addr_refuses_what_it_cannot_bind(monkeypatch: pytest.MonkeyPatch,
                                                  text: str) -> None:
    monkeypatch.setenv("MOOR_METRICS_ADDR", text)
    with pytest.raises(InvalidParameter, match="MOOR_METRICS_ADDR"):
        metrics_addr()


def test_a_reducer_on_its_own_serves_only_when_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOOR_METRICS_ADDR", raising=False)
    assert metrics_addr(default=None) is None


# --- against the journal (fakeredis) ----------------------------------------------------------

def scrape(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def fake() -> Any:
    r = fakeredis.FakeRedis()
    keys = fresh_keys()
    yield r, keys
    cleanup(r, keys)


def test_counters_and_histograms_match_the_journal(fake: Any) -> None:
    r, keys = fake
    client = Client(r, keys, timeout=5)
    with ReducerThread(r, keys) as reducer:
        seed(client)
        driver = SagaDriver(r, keys, client)
        ok = client.create(busybox(), name="ok")
        client.start("ok", wait=False)
        drive(driver, lambda: reducer.world.containers[ok].running)
        with pytest.raises(Conflict):
            client.remove("ok")  # running: refused with 409
        bad = client.create(busybox(), name="bad")
        driver.fail_step = "endpoint"
        client.start("bad", wait=False)
        drive(driver, lambda: reducer.world.containers[bad].started_at == 0
              and not reducer.world.containers[bad].saga)
        driver.fail_step = None
        dup = c.CreateContainer(name="dup", config=busybox())
        first = client.submit(dup, container_id=new_container_id(), command_id="dup-1")
        client.submit(dup, container_id=first.result.container_id, command_id="dup-1")
        r.xadd(keys.commands, {"env": b"not msgpack", "cmd": b""})  # quarantined
        client.stop("ok", wait=False)
        drive(driver, lambda: not reducer.world.containers[ok].running)
        samples: dict[Any, float] = {}

        def settled() -> bool:  # the metrics count a batch once its write has landed
            samples.update(scrape(reducer.metrics.registry))
            return value(samples, "moor_quarantined_entries_total") == 1 \
                and value(samples, "moor_commands_decided_total", type="StopContainer") == 1
        drive(driver, settled)
        records = [record for _, record in all_records(r, keys)]

    kinds = collections.Counter(type(x.event).__name__ for x in records)
    decided = sum(v for (name, _), v in samples.items()
                  if name == "moor_commands_decided_total")
    assert decided == len({x.meta.command_id for x in records})  # one command, >= 1 record
    received = sum(v for (name, _), v in samples.items()
                   if name == "moor_commands_received_total")
    assert received == decided + 1  # the duplicate: received, answered, not decided again
    assert value(samples, "moor_commands_received_total", type="CreateContainer") == 3 + 1
    rejections = collections.Counter((x.event.command, str(x.event.status)) for x in records
                                     if isinstance(x.event, e.CommandRejected))
    assert rejections == {("RemoveContainer", "409"): 1}
    assert value(samples, "moor_commands_rejected_total", type="RemoveContainer",
                 status="409") == 1
    assert value(samples, "moor_job_failures_total", step="endpoint") == kinds["StartFailed"] == 1
    assert value(samples, "moor_quarantined_entries_total") == r.xlen(keys.quarantine) == 1
    for step, fact in (("mount", "RootfsMounted"), ("sandbox", "SandboxCreated"),
                       ("endpoint", "NetworkConnected"), ("spawn", "ContainerStarted")):
        count = value(samples, "moor_start_step_seconds_count", step=step)
        assert count == kinds[fact], step
        assert value(samples, "moor_start_step_seconds_bucket", step=step, le="+Inf") == count
    assert value(samples, "moor_start_step_seconds_count", step="mount") == 2  # ok and bad
    assert value(samples, "moor_start_seconds_count") == kinds["ContainerStarted"] == 1
    batches = value(samples, "moor_reducer_fold_seconds_count")
    assert batches >= 1 and value(samples, "moor_reducer_fold_seconds_bucket", le="2.5") \
        == batches
    assert value(samples, "moor_reducer_batch_commands_sum") == received + 1  # + quarantined
    assert value(samples, "moor_reducer_leader") == 1
    assert value(samples, "moor_reducer_lease_changes_total", change="acquired") == 1
    replayed = collections.Counter(status_of(x) for x in fold(records).containers.values())
    assert replayed == {"exited": 1, "created": 2}  # ok stopped; bad never ran; dup
    for state in STATES:
        assert value(samples, "moor_containers", state=state) == replayed[state], state


def _send_old(r: Any, keys: Any, age_ms: int, n: int) -> None:
    """Append n creates whose stream ids say Redis took them age_ms ago."""
    base = time.time_ns() // 1_000_000 - age_ms
    for i in range(n):
        env = c.Envelope(command_id=f"old-{i}", container_id=new_container_id(),
                         issued_at=time.time_ns(), actor="t")
        cmd = c.CreateContainer(name=f"old{i}", config=busybox())
        r.xadd(keys.commands, {"env": CODEC.encode(env), "cmd": CODEC.encode(cmd)},
               id=f"{base}-{i + 1}")


def test_lag_counts_undecided_entries_and_the_age_of_the_oldest(fake: Any) -> None:
    r, keys = fake
    reducer = Reducer(r, keys)
    assert reducer.try_acquire()
    _send_old(r, keys, 5000, 3)
    samples = scrape(reducer.metrics.registry)
    assert value(samples, "moor_reducer_lag_entries", inbox="control") == 3
    assert 5 <= value(samples, "moor_reducer_lag_seconds", inbox="control") < 60
    assert value(samples, "moor_reducer_lag_entries", inbox="reports") == 0
    entries = reducer.intake.read()  # read, not yet written: pending in the group
    assert len(entries) == 3
    samples = scrape(reducer.metrics.registry)
    assert value(samples, "moor_reducer_lag_entries", inbox="control") == 3
    assert value(samples, "moor_reducer_lag_seconds", inbox="control") >= 5
    reducer.intake.reread_pending()
    assert reducer.step() == 3
    samples = scrape(reducer.metrics.registry)
    assert value(samples, "moor_reducer_lag_entries", inbox="control") == 0
    assert value(samples, "moor_reducer_lag_seconds", inbox="control") == 0
    reducer.release()
    samples = scrape(reducer.metrics.registry)  # a standby leaves state gauges to the leader
    assert value(samples, "moor_reducer_leader") == 0
    assert ("moor_containers", (("state", "created"),)) not in samples
    assert value(samples, "moor_reducer_lease_changes_total", change="released") == 1


def test_a_metrics_failure_never_stops_the_fold(fake: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    r, keys = fake
    reducer = Reducer(r, keys)

    def broken(*_: object) -> None:
        raise RuntimeError("a metrics bug")
    monkeypatch.setattr(reducer.metrics, "_written", broken)
    assert reducer.try_acquire()
    _send_old(r, keys, 0, 2)
    assert reducer.step() == 2
    assert r.xlen(keys.events) == 2  # decided and written (refused creates: no image)


# --- the endpoint ---------------------------------------------------------------------------

def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_the_endpoint_serves_on_a_socket_handed_down(fake: Any) -> None:
    r, keys = fake
    reducer = Reducer(r, keys)
    parent = metrics_http.listen("127.0.0.1", 0)  # what moor up binds
    server = metrics_http.serve(metrics_http.inherited(parent.fileno()),
                                reducer.metrics.registry)
    try:
        text = get(metrics_http.url_of(parent))
        assert "moor_reducer_leader 0.0" in text
        assert "# TYPE moor_reducer_fold_seconds histogram" in text
    finally:
        server.close()
    # The reducer's copy is closed; moor up's stays open for the next reducer.
    second = metrics_http.serve(metrics_http.inherited(parent.fileno()),
                                reducer.metrics.registry)
    try:
        assert "moor_reducer_leader" in get(metrics_http.url_of(parent))
    finally:
        second.close()
        parent.close()


def test_the_reducer_serves_while_it_runs_where_told(fake: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    r, keys = fake
    probe = metrics_http.listen("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    monkeypatch.setenv("MOOR_METRICS_ADDR", f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/metrics"
    with ReducerThread(r, keys) as reducer:
        deadline = time.monotonic() + 5
        while reducer.epoch is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "moor_reducer_leader 1.0" in get(url)
    with pytest.raises(OSError):
        get(url)  # stopped with run()


def test_a_bad_address_is_logged_and_the_reducer_runs_anyway(
        fake: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    r, keys = fake
    monkeypatch.setenv("MOOR_METRICS_ADDR", "nowhere:1")
    client = Client(r, keys, timeout=5)
    with ReducerThread(r, keys):
        seed(client)
        assert client.create(busybox(), name="still")
    assert "metrics not served" in caplog.text


def test_buckets_count_like_prometheus_le() -> None:
    buckets = Buckets((0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 7.0):
        buckets.observe(seconds)
    cumulative, total = buckets.exposed()
    assert cumulative == [("0.1", 2), ("1.0", 3), ("+Inf", 4)]  # a bound is inclusive
    assert total == pytest.approx(7.65)
