"""Stats and top without a container: the docker CLI's arithmetic, Docker's JSON shapes,
the kernel's file formats (fake cgroup and /proc trees), ps output filtering, and the
API's collector over fakeredis, a reducer thread and the test-only saga driver (the host
sampler replaced by a counting fake)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from aiohttp.test_utils import TestClient, TestServer

from commands.client import Client
from engine.errors import Internal
from moor.api import collector as collector_module
from moor.api.app import build_app
from moor.api.context import ApiContext
from moor.statscli import (
    block_io,
    bytes_size,
    cpu_percent,
    human_size,
    memory_used,
    stats_row,
    tabulate,
)
from tests.harness import ReducerThread, SagaDriver, busybox, cleanup, drive, fresh_keys, seed
from workers.proc import stats as host_stats
from workers.proc.stats import document, parse_io_stat, parse_net_dev, parse_system_cpu, sample
from workers.proc.top import parse_ps, validate_ps_args

CID = "c0ffee" + "0" * 58

# Go's encoding of moby's `StatsResponse{Name: "/web", ID: CID}`, written from its struct
# tags (api/types/container/stats.go, v28): what dockerd answers for a stopped container.
ZERO_JSON = (
    '{"name":"/web","id":"CID","read":"0001-01-01T00:00:00Z","preread":"0001-01-01T00:00:00Z",'
    '"pids_stats":{},"blkio_stats":{"io_service_bytes_recursive":null,'
    '"io_serviced_recursive":null,"io_queue_recursive":null,"io_service_time_recursive":null,'
    '"io_wait_time_recursive":null,"io_merged_recursive":null,"io_time_recursive":null,'
    '"sectors_recursive":null},"num_procs":0,"storage_stats":{},'
    '"cpu_stats":{"cpu_usage":{"total_usage":0,"usage_in_kernelmode":0,"usage_in_usermode":0},'
    '"throttling_data":{"periods":0,"throttled_periods":0,"throttled_time":0}},'
    '"precpu_stats":{"cpu_usage":{"total_usage":0,"usage_in_kernelmode":0,'
    '"usage_in_usermode":0},"throttling_data":{"periods":0,"throttled_periods":0,'
    '"throttled_time":0}},"memory_stats":{}}').replace("CID", CID)


def cpu(total: int, system: int, cpus: int = 2, percpu: list[int] | None = None
        ) -> dict[str, Any]:
    usage: dict[str, Any] = {"total_usage": total, "usage_in_kernelmode": 0,
                             "usage_in_usermode": total}
    if percpu is not None:
        usage["percpu_usage"] = percpu
    return {"cpu_usage": usage, "system_cpu_usage": system, "online_cpus": cpus,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


# --- the docker CLI's arithmetic ---------------------------------------------------------

def test_cpu_percent_as_the_docker_cli_computes_it() -> None:
    # One busy core of two over a second: the container used 1 s of the host's 2 s.
    doc = {"cpu_stats": cpu(3_000_000_000, 12_000_000_000),
           "precpu_stats": cpu(2_000_000_000, 10_000_000_000)}
    assert cpu_percent(doc) == pytest.approx(100.0)
    doc["cpu_stats"]["online_cpus"] = 0  # unknown: the per-CPU list's length instead
    doc["cpu_stats"]["cpu_usage"]["percpu_usage"] = [1, 2, 3, 4]
    assert cpu_percent(doc) == pytest.approx(200.0)
    idle = {"cpu_stats": cpu(5, 10), "precpu_stats": cpu(5, 8)}
    assert cpu_percent(idle) == 0.0
    assert cpu_percent(document("web", CID, None)) == 0.0  # zeroed: no system time at all


def test_memory_used_leaves_out_the_inactive_file_cache() -> None:
    assert memory_used({"usage": 100, "stats": {"total_inactive_file": 30,
                                                "inactive_file": 10}}) == 70  # v1
    assert memory_used({"usage": 100, "stats": {"inactive_file": 10}}) == 90  # v2
    assert memory_used({"usage": 100, "stats": {"total_inactive_file": 200}}) == 100
    assert memory_used({}) == 0


def test_sizes_as_go_units_prints_them() -> None:
    assert bytes_size(64 << 20) == "64MiB"
    assert bytes_size(0) == "0B"
    assert bytes_size(1536) == "1.5KiB"
    assert bytes_size(24683784 * 1024) == "23.54GiB"
    assert human_size(0) == "0B"
    assert human_size(1234) == "1.23kB"
    assert human_size(999_999) == "1e+03kB"  # Go's %.3g does the same
    assert human_size(52_428_800) == "52.4MB"


def test_block_io_sums_service_bytes_by_op() -> None:
    entries = [{"major": 8, "minor": 0, "op": op, "value": v}
               for op, v in (("Read", 10), ("Write", 20), ("Sync", 5), ("Total", 30),
                             ("read", 1), ("write", 2))]
    assert block_io({"io_service_bytes_recursive": entries}) == (11, 22)
    assert block_io({"io_service_bytes_recursive": None}) == (0, 0)


def test_stats_row_renders_the_docker_columns() -> None:
    reading = {"read": "2026-12-06T10:00:01Z", "cpu_stats": cpu(3_000_000_000, 12_000_000_000),
               "memory_stats": {"usage": 32 << 20, "limit": 64 << 20,
                                "stats": {"total_inactive_file": 0}},
               "pids_stats": {"current": 3},
               "blkio_stats": {"io_service_bytes_recursive": [
                   {"major": 8, "minor": 0, "op": "Read", "value": 4096}]},
               "networks": {"eth0": {"rx_bytes": 1500, "tx_bytes": 700}}}
    before = {"read": "2026-12-06T10:00:00Z", "cpu_stats": cpu(2_000_000_000, 10_000_000_000)}
    row = stats_row(document("web", CID, reading, before))
    assert row == [CID[:12], "web", "100.00%", "32MiB / 64MiB", "50.00%", "1.5kB / 700B",
                   "4.1kB / 0B", "3"]
    assert stats_row(document("/web", CID, None), trunc=False) == [
        CID, "web", "0.00%", "0B / 0B", "0.00%", "0B / 0B", "0B / 0B", "0"]


def test_tabulate_pads_like_go_tabwriter() -> None:
    # tabwriter(minwidth 10, padding 3): every cell but the last is max(len + 3, 10) wide.
    out = tabulate([["CONTAINER ID", "NAME", "PIDS"], ["abc", "a-rather-long-name", "1"]],
                   minwidth=10)
    assert out == ("CONTAINER ID   NAME                 PIDS\n"
                   "abc            a-rather-long-name   1")


# --- Docker's JSON shape -------------------------------------------------------------------

def test_a_stopped_container_gets_dockers_zeroed_document() -> None:
    text = json.dumps(document("web", CID, None), separators=(",", ":"))
    assert text == ZERO_JSON


def test_a_document_carries_the_previous_reading() -> None:
    first = {"read": "2026-12-06T10:00:00.5Z", "cpu_stats": cpu(1, 2)}
    second = {"read": "2026-12-06T10:00:01.5Z", "cpu_stats": cpu(3, 4),
              "networks": {"eth0": {"rx_bytes": 1}}}
    doc = document("/web", CID, second, first)
    assert doc["name"] == "/web" and doc["read"] == second["read"]
    assert doc["preread"] == first["read"] and doc["precpu_stats"] == first["cpu_stats"]
    assert list(doc)[-1] == "networks"  # after memory_stats, as moby's field order has it


# --- the kernel's formats and the host sampler ---------------------------------------------

PROC_STAT = """cpu  100 5 50 1000 10 1 2 3 0 0
cpu0 50 2 25 500 5 1 1 2 0 0
cpu1 50 3 25 500 5 0 1 1 0 0
intr 1 2 3
"""
NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0
  eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0
"""  # noqa: E501


def test_parsers_read_the_kernels_formats() -> None:
    # dockerd: user..softirq of the `cpu` line (steal left out) at 100 Hz, in ns.
    assert parse_system_cpu(PROC_STAT) == ((100 + 5 + 50 + 1000 + 10 + 1 + 2) * 10_000_000, 2)
    assert parse_net_dev(NET_DEV) == {"eth0": {
        "rx_bytes": 5000, "rx_packets": 40, "rx_errors": 1, "rx_dropped": 2,
        "tx_bytes": 3000, "tx_packets": 30, "tx_errors": 3, "tx_dropped": 4}}
    assert parse_io_stat("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n") == [
        {"major": 8, "minor": 0, "op": "read", "value": 4096},
        {"major": 8, "minor": 0, "op": "write", "value": 8192}]


def _files(base: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def fake_proc(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    _files(proc, {"stat": PROC_STAT, "meminfo": "MemTotal:       1048576 kB\n",
                  "4242/net/dev": NET_DEV,
                  # utime 30, stime 10, cutime 5, cstime 5 ticks (fields 14-17)
                  "4242/stat": "4242 (sh) S 1 4242 4242 0 -1 0 0 0 0 0 30 10 5 5 20 0\n"})
    return proc


def _v1_tree(root: Path, accounting: bool) -> None:
    controllers = ["memory", "pids", "cpu", "devices"] + (["cpuacct", "blkio"] if accounting
                                                          else [])
    for controller in controllers:
        _files(root / controller, {"cgroup.procs": ""})
    group = f"moorage/e1/{CID}"
    _files(root / "memory" / group, {
        "memory.usage_in_bytes": "52428800\n", "memory.max_usage_in_bytes": "60000000\n",
        "memory.limit_in_bytes": "9223372036854771712\n", "memory.failcnt": "0\n",
        "memory.stat": "cache 4096\nrss 52000000\ninactive_file 1000\n"
                       "total_inactive_file 2048\nunknown_key 7\n"})
    _files(root / "pids" / group, {"pids.current": "3\n", "pids.max": "max\n",
                                   "cgroup.procs": "4242\n"})
    _files(root / "cpu" / group, {"cpu.stat": "nr_periods 10\nnr_throttled 2\n"
                                              "throttled_time 5000\n"})
    if accounting:
        _files(root / "cpuacct" / group, {
            "cpuacct.usage": "1500000000\n", "cpuacct.usage_percpu": "1000000000 500000000 \n",
            "cpuacct.stat": "user 120\nsystem 30\n"})
        _files(root / "blkio" / group, {
            "blkio.throttle.io_service_bytes_recursive": "8:0 Read 4096\n8:0 Write 0\n"
                                                         "8:0 Total 4096\nTotal 4096\n",
            "blkio.throttle.io_serviced_recursive": "8:0 Read 1\nTotal 1\n"})


def test_sample_v1_reads_every_controller(tmp_path: Path, fake_proc: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    _v1_tree(root, accounting=True)
    monkeypatch.setenv("MOOR_CGROUP_ROOT", str(root))
    got = sample(CID, 4242, parent="moorage/e1", proc=str(fake_proc))
    assert got["pids_stats"] == {"current": 3}  # "max": no limit, omitted as Go omits 0
    assert got["cpu_stats"] == {
        "cpu_usage": {"total_usage": 1_500_000_000, "percpu_usage": [1_000_000_000, 500_000_000],
                      "usage_in_kernelmode": 300_000_000, "usage_in_usermode": 1_200_000_000},
        "system_cpu_usage": 11_680_000_000, "online_cpus": 2,
        "throttling_data": {"periods": 10, "throttled_periods": 2, "throttled_time": 5000}}
    mem = got["memory_stats"]
    assert mem["usage"] == 52428800 and mem["max_usage"] == 60000000
    assert mem["limit"] == 1 << 30  # unlimited: capped to the host's memory, as dockerd does
    assert "failcnt" not in mem and "unknown_key" not in mem["stats"]
    assert mem["stats"]["cache"] == 4096 and mem["stats"]["total_inactive_file"] == 2048
    assert len(mem["stats"]) == 32 and mem["stats"]["total_rss"] == 0
    blkio = got["blkio_stats"]
    assert blkio["io_service_bytes_recursive"] == [
        {"major": 8, "minor": 0, "op": op, "value": v}
        for op, v in (("Read", 4096), ("Write", 0), ("Total", 4096))]
    assert blkio["io_serviced_recursive"] == [{"major": 8, "minor": 0, "op": "Read", "value": 1}]
    assert blkio["sectors_recursive"] == []  # dockerd: every v1 list, empty ones too
    assert got["networks"]["eth0"]["rx_bytes"] == 5000 and "lo" not in got["networks"]
    assert "networks" not in sample(CID, 4242, parent="moorage/e1", network=False,
                                    proc=str(fake_proc))
    doc = document("web", CID, got)
    assert list(doc) == ["name", "id", "read", "preread", "pids_stats", "blkio_stats",
                         "num_procs", "storage_stats", "cpu_stats", "precpu_stats",
                         "memory_stats", "networks"]


def test_sample_v1_without_accounting_groups_reports_what_it_can(
        tmp_path: Path, fake_proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    _v1_tree(root, accounting=False)
    monkeypatch.setenv("MOOR_CGROUP_ROOT", str(root))
    got = sample(CID, 4242, parent="moorage/e1", proc=str(fake_proc))
    tick = 1_000_000_000 // host_stats.CLOCK_TICKS
    assert got["cpu_stats"]["cpu_usage"] == {"total_usage": 50 * tick,
                                             "usage_in_kernelmode": 15 * tick,
                                             "usage_in_usermode": 35 * tick}
    assert set(got["blkio_stats"].values()) == {None}  # no blkio group: dockerd's nil
    with pytest.raises(FileNotFoundError):  # the group is gone: the container stopped
        sample("0" * 64, 4242, parent="moorage/e1", proc=str(fake_proc))


def test_sample_v2_reads_the_unified_group(tmp_path: Path, fake_proc: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    _files(root, {"cgroup.controllers": "cpu io memory pids\n"})
    _files(root / "moorage/e1" / CID, {
        "memory.current": "67108864\n", "memory.max": "67108864\n",
        "memory.stat": "anon 60000000\nfile 4096\ninactive_file 4096\n",
        "memory.events": "low 0\nhigh 0\nmax 4\noom 2\noom_kill 1\n",
        "cpu.stat": "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n"
                    "nr_periods 7\nnr_throttled 1\nthrottled_usec 300\n",
        "pids.current": "2\n", "pids.max": "100\n",
        "io.stat": "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n"})
    monkeypatch.setenv("MOOR_CGROUP_ROOT", str(root))
    got = sample(CID, 4242, parent="moorage/e1", proc=str(fake_proc))
    assert got["pids_stats"] == {"current": 2, "limit": 100}
    assert got["cpu_stats"]["cpu_usage"] == {"total_usage": 2_500_000_000,
                                             "usage_in_kernelmode": 500_000_000,
                                             "usage_in_usermode": 2_000_000_000}
    assert got["cpu_stats"]["throttling_data"] == {"periods": 7, "throttled_periods": 1,
                                                   "throttled_time": 300_000}
    mem = got["memory_stats"]
    assert (mem["usage"], mem["limit"], mem["failcnt"]) == (64 << 20, 64 << 20, 2)
    assert len(mem["stats"]) == 31 and mem["stats"]["anon"] == 60000000
    assert got["blkio_stats"]["io_service_bytes_recursive"][1]["value"] == 8192
    assert got["blkio_stats"]["io_serviced_recursive"] is None  # v2: only bytes, as Docker


# --- top -----------------------------------------------------------------------------------

PS_OUT = """UID          PID    PPID  C STIME TTY          TIME CMD
root           1       0  0 10:00 ?        00:00:01 /sbin/init splash
root         500       1  0 10:00 ?        00:00:00 sleep 60
root         501     500  0 10:00 ?        00:00:00 sh -c while :; do :; done
"""


def test_top_keeps_the_containers_rows_and_joins_the_last_column() -> None:
    got = parse_ps(PS_OUT, [500, 501])
    assert got["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert got["Processes"] == [
        ["root", "500", "1", "0", "10:00", "?", "00:00:00", "sleep 60"],
        ["root", "501", "500", "0", "10:00", "?", "00:00:00", "sh -c while :; do :; done"]]
    assert parse_ps(PS_OUT, [])["Processes"] is None  # Go's nil slice: null
    threads = "USER PID TIME CMD\nroot 500 0:00 sleep\nroot - 0:00 -\nroot 1 0:00 init\n" \
              "root - 0:00 -\n"
    assert parse_ps(threads, [500])["Processes"] == [["root", "500", "0:00", "sleep"],
                                                     ["root", "-", "0:00", "-"]]


def test_top_refuses_what_dockerd_refuses() -> None:
    with pytest.raises(Internal, match="Couldn't find PID field in ps output"):
        parse_ps("USER COMMAND\nroot sh\n", [1])
    with pytest.raises(Internal, match=r"^Unexpected pid 'x': strconv.Atoi"):
        parse_ps("PID CMD\nx sh\n", [1])
    with pytest.raises(Internal, match='^specifying "uid=PID" is not allowed$'):
        validate_ps_args("ae -o uid=PID")


# moby's TestContainerTopValidatePSArgs table (daemon/top_unix_test.go): refused or not.
@pytest.mark.parametrize(("ps_args", "refused"), [
    ("ae -o uid=PID", True), ('ae -o "uid= PID"', True),
    ('ae -o "uid=\u2003PID"', False),  # a unicode space is no separator for Go's \s
    ("ae o uid=PID", True), ("aeo uid=PID", True), ("ae -O uid=PID", True),
    ("ae -o pid=PID2 -o uid=PID", True), ("ae -o pid=PID", False),
    ("ae -o pid=PID -o uid=PIDX", True), ("aeo pid=PID", False), ("ae", False), ("", False)])
def test_ps_args_are_checked_as_dockerd_checks_them(ps_args: str, refused: bool) -> None:
    if refused:
        with pytest.raises(Internal, match="is not allowed"):
            validate_ps_args(ps_args)
    else:
        validate_ps_args(ps_args)


# --- the API and its collector ---------------------------------------------------------------

@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ApiContext, Any]]:
    """An API context on fakeredis with a reducer thread and a saga driver, and a fake host
    sampler that counts its reads."""
    reads: list[str] = []

    def fake_sample(cid: str, pid: int, *, parent: str, network: bool = True,
                    proc: str = "/proc") -> dict[str, Any]:
        reads.append(cid)
        n = len(reads)
        return {"read": f"2026-12-06T10:00:00.{n:09d}Z", "cpu_stats": cpu(n * 10**9, n * 4 * 10**9),
                "memory_stats": {"usage": 1 << 20, "limit": 64 << 20}, "pids_stats":
                {"current": pid}}

    monkeypatch.setattr(host_stats, "sample", fake_sample)
    monkeypatch.setattr(collector_module, "INTERVAL", 0.05)
    redis = fakeredis.FakeRedis()
    keys = fresh_keys()
    with ReducerThread(redis, keys) as reducer:
        client = Client(redis, keys, timeout=5)
        seed(client)
        context = ApiContext(redis=redis, keys=keys, data_root=str(tmp_path), timeout=5)
        yield context, (client, SagaDriver(redis, keys, client), reducer, reads)
    cleanup(redis, keys)
    redis.close()


async def _lines(resp: Any, count: int) -> list[dict[str, Any]]:
    return [json.loads(await asyncio.wait_for(resp.content.readline(), 5)) for _ in range(count)]


def test_stats_and_top_of_a_stopped_container(api: tuple[ApiContext, Any]) -> None:
    context, (client, _, _, reads) = api
    cid = client.create(busybox(), name="idle")

    async def check(http: TestClient[Any, Any]) -> None:
        resp = await http.get("/containers/idle/stats?stream=0")
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        assert json.dumps(await resp.json(), separators=(",", ":")) == ZERO_JSON.replace(
            "/web", "/idle").replace(CID, cid)
        resp = await http.get("/containers/idle/stats?stream=1&one-shot=1")
        assert (resp.status, await resp.json()) == (
            400, {"message": "cannot have stream=true and one-shot=true"})
        # one-shot is an API 1.41 parameter: older clients stream as asked.
        resp = await http.get("/v1.40/containers/idle/stats?stream=0&one-shot=1")
        assert resp.status == 200
        resp = await http.get("/containers/nope/stats")
        assert (resp.status, await resp.json()) == (404, {"message": "No such container: nope"})
        resp = await http.get("/containers/idle/top")
        assert (resp.status, await resp.json()) == (
            409, {"message": f"container {cid} is not running"})
        resp = await http.get("/containers/idle/top?ps_args=-o%20user=PID")
        assert (resp.status, await resp.json()) == (
            500, {"message": 'specifying "user=PID" is not allowed'})

    _serve(context, check)
    assert reads == []  # nothing read the host for a stopped container


def test_one_collector_read_serves_every_subscriber_until_removal(
        api: tuple[ApiContext, Any]) -> None:
    context, (client, driver, reducer, reads) = api
    cid = client.create(busybox(), name="busy")
    client.start("busy", wait=False)
    drive(driver, lambda: reducer.world.containers[cid].running)
    pid = reducer.world.containers[cid].pid

    async def check(http: TestClient[Any, Any]) -> None:
        collector = collector_module.collector_for(_request(http))
        one = await http.get("/containers/busy/stats")
        two = await http.get(f"/containers/{cid[:10]}/stats")
        first, second = await _lines(one, 4), await _lines(two, 4)
        assert collector.feeds == 1
        # One read per tick serves both clients: each sees consecutive readings (a read
        # per subscriber would number them two apart).
        for docs in (first, second):
            ticks = [int(d["read"][20:29]) for d in docs]
            assert ticks == list(range(ticks[0], ticks[0] + 4)), ticks
        assert first[0]["precpu_stats"]["cpu_usage"]["total_usage"] == 0
        assert first[1]["precpu_stats"] == first[0]["cpu_stats"]
        assert first[1]["name"] == "/busy" and first[1]["id"] == cid
        assert first[1]["pids_stats"] == {"current": pid}
        # stream=false: the second reading, with the first as precpu_stats.
        resp = await http.get("/containers/busy/stats?stream=false")
        doc = await resp.json()
        assert doc["precpu_stats"]["cpu_usage"]["total_usage"] > 0
        assert doc["cpu_stats"]["cpu_usage"]["total_usage"] > \
            doc["precpu_stats"]["cpu_usage"]["total_usage"]
        # Stopped: the collection stops reading the host; the streams go on zeroed.
        client.stop("busy", wait=False)
        await asyncio.to_thread(drive, driver, lambda: not reducer.world.containers[cid].running)
        for _ in range(100):  # the readings queued before the stop, then zeroed ones
            if (await _lines(one, 1))[0]["read"] == "0001-01-01T00:00:00Z":
                break
        else:
            raise AssertionError("still read after the container stopped")
        count = len(reads)
        zeroed = await _lines(one, 3)
        assert all(d["cpu_stats"]["cpu_usage"]["total_usage"] == 0 for d in zeroed)
        assert len(reads) == count
        # Removed: dockerd's StopCollection ends every stream and the feed.
        client.remove("busy", wait=False)
        await asyncio.to_thread(drive, driver, lambda: cid not in reducer.world.containers)
        for resp in (one, two):
            await asyncio.wait_for(resp.content.read(), 5)  # to the end of the stream
        assert collector.feeds == 0
        assert collector._sampler is None and collector._follower is None

    _serve(context, check)


def test_the_collection_closes_when_its_last_subscriber_leaves(
        api: tuple[ApiContext, Any]) -> None:
    context, (client, driver, reducer, reads) = api
    cid = client.create(busybox(), name="left")
    client.start("left", wait=False)
    drive(driver, lambda: reducer.world.containers[cid].running)

    async def check(http: TestClient[Any, Any]) -> None:
        collector = collector_module.collector_for(_request(http))
        resp = await http.get("/containers/left/stats")
        await _lines(resp, 2)
        resp.close()  # the client goes away
        for _ in range(100):
            if collector.feeds == 0:
                break
            await asyncio.sleep(0.05)
        assert collector.feeds == 0 and collector._sampler is None
        count = len(reads)
        await asyncio.sleep(0.3)
        assert len(reads) == count  # no more host reads

    _serve(context, check)


class _AppRequest:
    """What collector_for needs of a request: its application."""

    def __init__(self, app: Any) -> None:
        self.app = app


def _request(http: TestClient[Any, Any]) -> Any:
    return _AppRequest(http.app)


def _serve(context: ApiContext, check: Any) -> None:
    async def main() -> None:
        async with TestClient(TestServer(build_app(context))) as http:
            await check(http)

    asyncio.run(main())
