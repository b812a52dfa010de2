"""Pure projections: ps, inspect, the docker-events feed, watch rows, replay/verify, export/import.

Worlds are built by driving commands through `engine.core.decider.apply_command`, exactly as the
reducer does, and the records it produces are kept with reducer-like stream ids.
"""

from __future__ import annotations

import io
import json
from typing import Any

import msgspec
import pytest

from commands import schema as c
from engine.core.decider import Outcome, apply_command
from engine.core.networks import network_id
from engine.core.state import World
from engine.errors import InvalidParameter, NotFound
from events import model as e
from events.specs import (
    ContainerConfig,
    HostConfig,
    ImageConfig,
    NetworkSpec,
    PortBinding,
)
from projections.audit import export_jsonl, format_entry, import_jsonl, replay, verify
from projections.views.changes import ChangeView, format_change
from projections.views.feed import FeedState, docker_event, event_filter, feed, format_event
from projections.views.filters import parse_filter_flags, parse_filters_json
from projections.views.inspect import find_image, inspect_container, inspect_image
from projections.views.points import (
    ZERO_TIME,
    human_duration,
    parse_point,
    parse_time,
    rfc3339_nano,
)
from projections.views.ps import format_table, list_containers, table_row

S = 1_000_000_000
T0 = 1_700_000_000 * S  # 2023-11-14T22:13:20Z
A = "a" * 64
B = "b" * 64
C = "c" * 64
IMAGE_ID = "sha256:" + "1" * 64
OTHER_IMAGE_ID = "sha256:" + "2" * 64
BRIDGE = NetworkSpec(name="bridge", subnet="172.17.0.0/16", gateway="172.17.0.1",
                     bridge="docker0")


class Journal:
    """Drive commands through apply_command and keep (stream id, record) like the reducer."""

    def __init__(self) -> None:
        self.world = World()
        self.entries: list[tuple[str, e.EventRecord]] = []
        self.clock = T0
        self.count = 0

    def run(self, cmd: c.Command, cid: str = "", *, after_s: float = 1, actor: str = "tester",
            reason: str = "") -> Outcome:
        """Issue a command `after_s` seconds after the previous one and record its events."""
        self.clock += int(after_s * S)
        self.count += 1
        env = c.Envelope(command_id=f"cmd-{self.count}", container_id=cid,
                         issued_at=self.clock, actor=actor, reason=reason)
        outcome = apply_command(self.world, env, cmd)
        ms = self.clock // 1_000_000
        self.entries.extend((f"{ms}-{i}", r) for i, r in enumerate(outcome.records))
        return outcome

    def base(self) -> Journal:
        self.run(c.DefineNetwork(network=BRIDGE), actor="boot")
        self.run(c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox",),
                                 config=ImageConfig(cmd=("sh",), labels={"from": "image"})))
        self.run(c.RegisterImage(image_id=OTHER_IMAGE_ID, repo_tags=("nginx:1.25",),
                                 config=ImageConfig(cmd=("nginx", "-g", "daemon off;"),
                                                    exposed_ports=("80/tcp",))))
        return self

    def create(self, cid: str, name: str, image: str = "busybox", **kw: Any) -> None:
        host = kw.pop("host_config", HostConfig())
        out = self.run(c.CreateContainer(config=ContainerConfig(image=image, **kw), name=name,
                                         host_config=host), cid)
        assert out.result.ok, out.result

    def start(self, cid: str, pid: int = 4242) -> None:
        assert self.run(c.StartContainer(ref=cid)).result.ok
        gen = self.world.containers[cid].generation
        for report in (c.ReportMounted(generation=gen, rootfs="/r"),
                       c.ReportSandbox(generation=gen, sandbox_key=f"/run/netns/moor-{cid[:12]}"),
                       c.ReportEndpoint(generation=gen, endpoint_id="ep" + cid[:10]),
                       c.ReportProcessStarted(generation=gen, pid=pid,
                                              started_at=self.clock + 1000)):
            self.run(report, cid, after_s=0.001)

    def exit(self, cid: str, code: int, after_s: float = 1) -> None:
        gen = self.world.containers[cid].generation
        self.run(c.ReportProcessExited(generation=gen, exit_code=code,
                                       finished_at=self.clock + int(after_s * S)), cid,
                 after_s=after_s)

    def stop(self, cid: str) -> None:
        assert self.run(c.StopContainer(ref=cid)).result.ok
        self.exit(cid, 143, after_s=0.5)

    def remove(self, cid: str, force: bool = False) -> None:
        running = self.world.containers[cid].running
        assert self.run(c.RemoveContainer(ref=cid, force=force)).result.ok
        if running:
            self.exit(cid, 137, after_s=0.1)
        self.run(c.ReportRemoved(generation=self.world.containers[cid].generation), cid,
                 after_s=0.1)


def scenario() -> Journal:
    """web (nginx, running, port 8080), job (exited 3), idle (created), gone (destroyed)."""
    j = Journal().base()
    j.create(A, "web", image="nginx:1.25", labels={"tier": "front", "team": "core"},
             host_config=HostConfig(port_bindings={"80/tcp": (PortBinding(host_port="8080"),)}))
    j.start(A)
    j.create(B, "job", labels={"tier": "batch"})
    j.start(B, pid=5000)
    j.exit(B, 3, after_s=2)
    j.create(C, "idle")
    j.create("d" * 64, "gone")
    j.remove("d" * 64)
    return j


# --- points -------------------------------------------------------------------------------

def test_human_duration_follows_docker_thresholds() -> None:
    cases = {0: "Less than a second", 1: "1 second", 59: "59 seconds", 60: "About a minute",
             119: "About a minute", 180: "3 minutes", 3599: "59 minutes", 3600: "About an hour",
             2 * 3600: "2 hours", 47 * 3600: "47 hours", 3 * 86400: "3 days",
             15 * 86400: "2 weeks", 90 * 86400: "3 months", 800 * 86400: "2 years"}
    for seconds, text in cases.items():
        assert human_duration(seconds * S) == text, seconds


def test_times_parse_and_format_like_docker() -> None:
    assert rfc3339_nano(0) == ZERO_TIME
    assert rfc3339_nano(T0) == "2023-11-14T22:13:20Z"
    assert rfc3339_nano(T0 + 120_000_000) == "2023-11-14T22:13:20.12Z"
    assert parse_time("1700000000", 0) == T0
    assert parse_time("1700000000.5", 0) == T0 + S // 2
    assert parse_time("2023-11-14T22:13:20.000000123Z", 0) == T0 + 123
    assert parse_time("2023-11-14T23:13:20+01:00", 0) == T0
    assert parse_time("10m", T0) == T0 - 600 * S
    assert parse_time("1h30m", T0) == T0 - 5400 * S
    with pytest.raises(InvalidParameter, match="invalid time 'yesterday'"):
        parse_time("yesterday", T0)
    point = parse_point("1700000000000-3", T0)
    assert point.stream_id == "1700000000000-3" and point.ns is None
    assert parse_point("5m", T0).ns == T0 - 300 * S


def test_filter_flags_and_api_json() -> None:
    assert parse_filter_flags(["Status=exited", "status=created", "label=a=b"]) == {
        "status": ["exited", "created"], "label": ["a=b"]}
    with pytest.raises(InvalidParameter, match="bad format of filter"):
        parse_filter_flags(["status"])
    assert parse_filters_json('{"status":["exited"]}') == {"status": ["exited"]}
    assert parse_filters_json('{"status":{"exited":true,"dead":false}}') == {
        "status": ["exited"]}


# --- ps -------------------------------------------------------------------------------------

def _ps(world: World, now: int, all: bool = False, limit: int | None = None,
        **filters: list[str]) -> list[str]:
    items = list_containers(world, all, {k.replace("_", "-"): v for k, v in filters.items()},
                            limit, now_ns=now)
    return [i["Names"][0] for i in items]


def test_ps_lists_running_by_default_and_all_newest_first() -> None:
    j = scenario()
    assert _ps(j.world, j.clock) == ["/web"]
    assert _ps(j.world, j.clock, all=True) == ["/idle", "/job", "/web"]
    assert _ps(j.world, j.clock, limit=2) == ["/idle", "/job"]  # -n includes stopped


def test_ps_item_shape() -> None:
    j = scenario()
    now = j.world.containers[A].started_at + 180 * S
    web, = list_containers(j.world, now_ns=now)
    assert web["Id"] == A
    assert web["Image"] == "nginx:1.25" and web["ImageID"] == OTHER_IMAGE_ID
    assert web["Command"] == "nginx -g daemon off;"
    assert web["Created"] == j.world.containers[A].created // S
    assert web["State"] == "running" and web["Status"] == "Up 3 minutes"
    assert web["Labels"] == {"tier": "front", "team": "core"}
    assert web["Ports"] == [{"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080,
                             "Type": "tcp"}]
    assert web["HostConfig"] == {"NetworkMode": "bridge"}
    net = web["NetworkSettings"]["Networks"]["bridge"]
    assert net["IPAddress"] == "172.17.0.2" and net["Gateway"] == "172.17.0.1"
    assert net["EndpointID"] == "ep" + A[:10]
    job = list_containers(j.world, True, {"name": ["job"]}, now_ns=now)[0]
    finished = j.world.containers[B].finished_at
    assert job["Status"] == f"Exited (3) {human_duration(now - finished)} ago"
    assert job["Ports"] == [] and job["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] == ""
    idle = list_containers(j.world, True, {"name": ["idle"]}, now_ns=now)[0]
    assert (idle["State"], idle["Status"]) == ("created", "Created")


def test_ps_status_filter_implies_all_and_validates() -> None:
    j = scenario()
    assert _ps(j.world, j.clock, status=["exited"]) == ["/job"]
    assert _ps(j.world, j.clock, status=["created", "running"]) == ["/idle", "/web"]
    with pytest.raises(InvalidParameter) as err:
        _ps(j.world, j.clock, status=["sleeping"])
    assert err.value.message == ("invalid value for state (sleeping): must be one of created, "
                                 "running, paused, restarting, removing, exited, dead")
    with pytest.raises(InvalidParameter, match="^invalid filter 'colour'$"):
        _ps(j.world, j.clock, colour=["red"])


def test_ps_name_id_label_exited_ancestor_filters() -> None:
    j = scenario()
    w, now = j.world, j.clock
    assert _ps(w, now, True, name=["jo"]) == ["/job"]  # substring
    assert _ps(w, now, True, name=["^/?(web|idle)$"]) == ["/idle", "/web"]  # regex
    assert _ps(w, now, True, id=["bbb"]) == ["/job"]
    assert _ps(w, now, True, label=["tier"]) == ["/job", "/web"]
    assert _ps(w, now, True, label=["tier=front"]) == ["/web"]
    assert _ps(w, now, True, label=["tier", "team=core"]) == ["/web"]  # every label must hold
    assert _ps(w, now, True, exited=["3"]) == ["/job"]
    assert _ps(w, now, True, exited=["0"]) == []
    with pytest.raises(InvalidParameter, match="exited=x"):
        _ps(w, now, True, exited=["x"])
    assert _ps(w, now, True, ancestor=["nginx:1.25"]) == ["/web"]
    assert _ps(w, now, True, ancestor=["busybox"]) == ["/idle", "/job"]
    assert _ps(w, now, True, ancestor=[IMAGE_ID]) == ["/idle", "/job"]
    assert _ps(w, now, True, ancestor=["nope"]) == []
    assert _ps(w, now, True, before=["job"]) == ["/web"]
    assert _ps(w, now, True, since=["web"]) == ["/idle", "/job"]
    with pytest.raises(NotFound, match="No such container: zzz"):
        _ps(w, now, True, before=["zzz"])
    assert _ps(w, now, True, publish=["8080"]) == ["/web"]
    assert _ps(w, now, True, expose=["80/tcp"]) == ["/web"]


def test_ps_removal_and_dead_statuses() -> None:
    j = scenario()
    j.run(c.RemoveContainer(ref="web", force=True))
    item = list_containers(j.world, True, {"name": ["web"]}, now_ns=j.clock)[0]
    assert item["State"] == "running"  # Docker: running wins until the kill lands
    j.exit(A, 137)
    item = list_containers(j.world, True, {"name": ["web"]}, now_ns=j.clock)[0]
    assert (item["State"], item["Status"]) == ("removing", "Removal In Progress")
    j.run(c.ReportStepFailed(generation=j.world.containers[A].generation, step="remove",
                             error="device busy"), A)
    item = list_containers(j.world, True, {"name": ["web"]}, now_ns=j.clock)[0]
    assert (item["State"], item["Status"]) == ("dead", "Dead")
    assert _ps(j.world, j.clock, status=["dead"]) == ["/web"]


def test_ps_table_looks_like_docker() -> None:
    j = scenario()
    now = j.world.containers[A].created + 3600 * S
    text = format_table(list_containers(j.world, True, now_ns=now), now)
    lines = text.splitlines()
    assert lines[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                "PORTS", "NAMES"]
    web = next(line for line in lines if line.endswith("web"))
    assert web.startswith(A[:12] + "   ")
    assert '"nginx -g daemon off;"' in web  # 20 characters: not truncated
    long = dict(list_containers(j.world, True, {"name": ["web"]}, now_ns=now)[0],
                Command="nginx -g daemon off; sleep")
    assert table_row(long, now)[2] == '"nginx -g daemon off…"'  # 19 + the ellipsis
    assert table_row(long, now, no_trunc=True)[2] == '"nginx -g daemon off; sleep"'
    assert "About an hour ago" in web and "0.0.0.0:8080->80/tcp" in web
    assert all(len(line.split("   ")) >= 2 for line in lines)


# --- inspect --------------------------------------------------------------------------------

def test_inspect_running_container() -> None:
    j = scenario()
    ctr = j.world.containers[A]
    doc = inspect_container(j.world, ctr, j.clock)
    assert doc["Id"] == A and doc["Name"] == "/web" and doc["Image"] == OTHER_IMAGE_ID
    assert doc["Created"] == rfc3339_nano(ctr.created)
    assert (doc["Path"], doc["Args"]) == ("nginx", ["-g", "daemon off;"])
    assert doc["Driver"] == "overlay2" and doc["Platform"] == "linux"
    state = doc["State"]
    assert state["Status"] == "running" and state["Running"] and state["Pid"] == 4242
    assert state["StartedAt"] == rfc3339_nano(ctr.started_at)
    assert state["FinishedAt"] == "0001-01-01T00:00:00Z"
    assert doc["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    assert [doc["HostConfig"][k] for k in ("CapAdd", "CapDrop", "SecurityOpt")] == [None] * 3
    assert doc["Config"]["Image"] == "nginx:1.25"
    assert doc["Config"]["ExposedPorts"] == {"80/tcp": {}}
    assert doc["Config"]["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert doc["Config"]["Hostname"] == A[:12]
    ns = doc["NetworkSettings"]
    assert ns["Ports"] == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}
    assert (ns["IPAddress"], ns["IPPrefixLen"], ns["Gateway"]) == ("172.17.0.2", 16,
                                                                 "172.17.0.1")
    assert ns["MacAddress"] == "02:42:ac:11:00:02"
    assert ns["SandboxKey"] == f"/run/netns/moor-{A[:12]}"
    bridge = ns["Networks"]["bridge"]
    assert bridge["NetworkID"] == network_id(World(), "bridge")  # 64 hex, as Docker's
    assert bridge["EndpointID"] == "ep" + A[:10]
    json.dumps(doc)  # JSON-ready


def test_inspect_stopped_container_has_no_addresses() -> None:
    j = scenario()
    doc = inspect_container(j.world, j.world.containers[B], j.clock)
    assert doc["State"]["Status"] == "exited" and doc["State"]["ExitCode"] == 3
    assert doc["State"]["FinishedAt"] != ZERO_TIME
    ns = doc["NetworkSettings"]
    assert ns["IPAddress"] == "" and ns["Ports"] == {} and ns["SandboxKey"] == ""
    assert ns["Networks"]["bridge"]["IPAddress"] == ""
    assert "ExposedPorts" not in doc["Config"]  # Docker omits empty ones
    assert doc["Config"]["Labels"] == {"from": "image", "tier": "batch"}


def test_inspect_image() -> None:
    j = scenario()
    doc = inspect_image(j.world, find_image(j.world, "nginx:1.25"))
    assert doc["Id"] == OTHER_IMAGE_ID and doc["RepoTags"] == ["nginx:1.25"]
    assert doc["Config"]["ExposedPorts"] == {"80/tcp": {}}
    with pytest.raises(NotFound, match="No such image: alpine"):
        find_image(j.world, "alpine")


# --- the docker events feed -----------------------------------------------------------------

def _feed(j: Journal, **filters: list[str]) -> list[tuple[str, str, dict[str, str]]]:
    return [(ev["Type"], ev["Action"], ev["Actor"]["Attributes"])
            for _, ev in feed(j.entries, filters=filters)]


def test_feed_maps_a_lifecycle_like_docker() -> None:
    j = Journal().base()
    j.create(A, "web", labels={"tier": "front"})
    j.start(A)
    j.stop(A)
    j.run(c.RenameContainer(ref="web", new_name="www"))
    j.remove(A)
    got = [(t, a) for t, a, _ in _feed(j)]
    assert got == [("image", "load"), ("image", "load"),
                   ("container", "create"), ("network", "connect"), ("container", "start"),
                   ("container", "kill"), ("network", "disconnect"), ("container", "die"),
                   ("container", "stop"), ("container", "rename"), ("container", "destroy")]
    by_action = {a: attrs for t, a, attrs in _feed(j, type=["container"])}
    assert by_action["create"] == {"from": "image", "tier": "front", "image": "busybox",
                                   "name": "web"}
    assert by_action["kill"]["signal"] == "15"
    assert by_action["die"]["exitCode"] == "143"
    assert by_action["rename"]["oldName"] == "/web" and by_action["rename"]["name"] == "www"
    assert by_action["destroy"]["name"] == "www" and by_action["destroy"]["image"] == "busybox"
    connect = next(attrs for t, a, attrs in _feed(j) if a == "connect")
    assert connect == {"container": A, "name": "bridge", "type": "bridge"}


def test_feed_event_shape_and_time() -> None:
    j = Journal().base()
    j.create(A, "web")
    sid, record = j.entries[-1]
    ev = docker_event(record, sid, FeedState())
    assert ev == {"status": "create", "id": A, "from": "busybox", "Type": "container",
                  "Action": "create", "Actor": {"ID": A, "Attributes": {
                      "from": "image", "image": "busybox", "name": "web"}},
                  "scope": "local", "time": record.meta.at // S, "timeNano": record.meta.at}
    line = format_event(ev)
    assert line == (f"{rfc3339_nano(record.meta.at)} container create {A} "
                    "(from=image, image=busybox, name=web)")
    internal = next(r for _, r in j.entries if isinstance(r.event, e.NetworkDefined))
    assert docker_event(internal, "1-0", FeedState()) is None


def test_feed_keeps_history_right_after_destroy() -> None:
    j = Journal().base()
    j.create(A, "web")
    j.remove(A)
    j.create(B, "web")  # the name is reused by another container
    names = [(ev["Action"], ev["id"][:1], ev["Actor"]["Attributes"]["name"])
             for _, ev in feed(j.entries, filters={"type": ["container"]})]
    assert names == [("create", "a", "web"), ("destroy", "a", "web"), ("create", "b", "web")]
    # With only the live World, a destroyed container's record still names it.
    destroy_sid, destroy = next((s, r) for s, r in j.entries
                                if isinstance(r.event, e.ContainerDestroyed))
    ev = docker_event(destroy, destroy_sid, j.world)
    assert ev is not None and ev["Actor"]["Attributes"]["name"] == "web"


def test_feed_filters_like_docker() -> None:
    j = scenario()
    assert {a for _, a, _ in _feed(j, container=["web"])} == {"create", "start"}
    assert {a for _, a, _ in _feed(j, container=["bbbb"])} == {"create", "start", "die"}
    assert [a for _, a, _ in _feed(j, event=["die"])] == ["die"]
    assert [a for _, a, _ in _feed(j, event=["die", "destroy"])] == ["die", "destroy"]
    assert {t for t, _, _ in _feed(j, type=["network"])} == {"network"}
    assert {attrs["name"] for t, _, attrs in _feed(j, image=["nginx"]) if t == "container"} == {
        "web"}
    assert {attrs["name"] for _, _, attrs in _feed(j, label=["tier=batch"])} == {"job"}
    assert [a for _, a, _ in _feed(j, network=["bridge"], event=["connect"])] == [
        "connect", "connect"]
    with pytest.raises(InvalidParameter, match="^invalid filter 'colour'$"):
        event_filter({"colour": ["red"]})


def test_image_events() -> None:
    j = Journal().base()
    j.run(c.RemoveImage(ref="nginx:1.25"))
    ev = [e for t, a, e in _feed(j, type=["image"])]
    image_id = j.world.tags.get("busybox:latest")  # the other image, still there
    assert image_id is not None and ev[-1]["name"] != image_id
    assert ev[-1]["name"].startswith("sha256:")  # Docker: untag and delete name the id
    assert [a for _, a, _ in _feed(j, type=["image"])] == ["load", "load", "untag", "delete"]


# --- watch rows ------------------------------------------------------------------------------

def test_change_view_rows_and_filters() -> None:
    j = scenario()
    view = ChangeView(container="job")
    rows = [r for sid, rec in j.entries if (r := view.apply(sid, rec)) is not None]
    assert [r["type"] for r in rows][:2] == ["ContainerCreated", "StartInitiated"]
    assert rows[-1]["type"] == "ContainerDied" and rows[-1]["status"] == "exited"
    line = format_change(rows[-1])
    assert line.split()[1:] == [B[:12], "job", "ContainerDied", "exited"]
    view = ChangeView(types=["ContainerDestroyed"])
    rows = [r for sid, rec in j.entries if (r := view.apply(sid, rec)) is not None]
    assert [(r["name"], r["status"]) for r in rows] == [("gone", "removed")]
    assert msgspec.to_builtins(view.world) == msgspec.to_builtins(j.world)
    with pytest.raises(InvalidParameter, match="unknown event type 'Nope'"):
        ChangeView(types=["Nope"])


# --- audit ----------------------------------------------------------------------------------

def test_replay_rebuilds_the_world_and_prints_a_timeline() -> None:
    j = scenario()
    j.run(c.StartContainer(ref="web"), actor="alice", reason="try again")  # 304: a rejection
    world, timeline = replay(j.entries)
    assert verify(world, j.world) == []
    assert len(timeline) == len(j.entries)
    first = format_entry(timeline[0])
    sid = j.entries[0][0]
    assert first == (f"{sid} 2023-11-14T22:13:21.000Z - v0 NetworkDefined actor=boot "
                     "cause=cmd-1 reason=-")
    last = format_entry(timeline[-1])
    assert last.split(" ", 2)[2].startswith(
        f"{A[:12]} v{j.world.containers[A].version} CommandRejected actor=alice cause=cmd-")
    assert last.endswith('reason="try again" rejected StartContainer 304: '
                         "container is already running")


def test_replay_until_an_id_or_a_time() -> None:
    j = scenario()
    created = next(i for i, (_, r) in enumerate(j.entries)
                   if isinstance(r.event, e.ContainerCreated))
    sid = j.entries[created][0]
    world, timeline = replay(j.entries, until_id=sid)
    assert timeline[-1].stream_id == sid and list(world.containers) == [A]
    world, timeline = replay(j.entries, until_ns=int(sid.split("-")[0]) * 1_000_000)
    assert timeline[-1].stream_id == sid
    world, _ = replay(j.entries, until_id=sid.split("-")[0])  # a bare ms: all of that ms
    assert world.containers[A].version == 1


def test_verify_lists_differences() -> None:
    j = scenario()
    world, _ = replay(j.entries)
    live, _ = replay(j.entries)
    live.containers[A] = msgspec.structs.replace(live.containers[A], exit_code=9)
    del live.names["idle"]
    live.destroyed.add("f" * 64)
    diffs = verify(world, live)
    assert f"container {A} exit_code: replay=(default) live=9" in diffs
    assert "name idle: only in the replay" in diffs
    assert f"destroyed {'f' * 64}: only in the live state" in diffs
    assert len(diffs) == 3


def test_export_import_round_trip() -> None:
    j = scenario()
    buf = io.StringIO()
    assert export_jsonl(j.entries, buf) == len(j.entries)
    lines = buf.getvalue().splitlines()
    first = json.loads(lines[0])
    assert first["id"] == j.entries[0][0] and first["record"]["event"]["type"] == "NetworkDefined"
    back = list(import_jsonl(io.StringIO(buf.getvalue())))
    assert back == j.entries
    world, _ = replay(back)
    assert verify(world, j.world) == []


def test_import_reports_bad_lines_by_number_and_goes_on() -> None:
    j = scenario()
    buf = io.StringIO()
    export_jsonl(j.entries[:4], buf)
    lines = buf.getvalue().splitlines()
    broken = [lines[0], "{not json", lines[1], "", '{"id":"5-0"}',
              lines[1],  # a repeated id: not after the previous line
              json.dumps({"id": "9999999999999-0", "record": {"meta": {}, "event": {}}}),
              lines[2], lines[3]]
    bad: list[Any] = []
    got = list(import_jsonl(io.StringIO("\n".join(broken) + "\n"), on_bad=bad.append))
    assert got == j.entries[:4]
    assert [b.where for b in bad] == ["line 2", "line 5", "line 6", "line 7"]
    assert "not an export line" in str(bad[0]) and str(bad[0]).startswith("line 2: ")
    assert "missing required field `record`" in bad[1].reason
    assert "is not after" in bad[2].reason
    assert "invalid record" in bad[3].reason
