"""Golden files: bytes written once per tag must decode to the same value forever.

Every event tag and every command tag has a checked-in msgpack file (events also a JSON
file, the export format) under `tests/unit/golden/`, and every host hand-off (the start
plan, the supervisor's spawn replies, exit.json and stop.json, in `events.saga` and
`events.runs`) a JSON file under `golden/host/`, decoded the way its reader does. The
normal run only decodes them and compares with the value built here. A new tag (or
hand-off) without a golden file fails the run; write its file with
`MOOR_REGEN_GOLDEN=1 python -m pytest tests/unit/test_codec_golden.py`.
Regeneration only writes files that are missing: a shipped file is never rewritten, since
its whole point is to hold the bytes an older writer produced.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rq.serializers import JSONSerializer

from commands import schema as c
from commands.codec import CODEC, CommandResult
from events import model as e
from events import runs, saga
from events.netspecs import EndpointSettings, LinkTarget, NetPlan, NetworkInfo, Networking
from events.specs import (
    ContainerConfig,
    DeviceMapping,
    Endpoint,
    ExecConfig,
    HostConfig,
    ImageConfig,
    LogConfig,
    Mount,
    MountPoint,
    NetworkSpec,
    PortBinding,
    RestartPolicy,
    Ulimit,
)

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("MOOR_REGEN_GOLDEN") == "1"

CID = "0123456789abcdef" * 4
IMAGE_ID = "sha256:" + "fe" * 32
NETWORK = NetworkSpec(name="bridge", subnet="172.17.0.0/16", gateway="172.17.0.1",
                      bridge="docker0")
ENDPOINT = Endpoint(network="bridge", ip_address="172.17.0.2", prefix_len=16,
                    gateway="172.17.0.1", mac_address="02:42:ac:11:00:02", endpoint_id="ep-1")
IMAGE_CONFIG_V1 = ImageConfig(cmd=("nginx", "-g", "daemon off;"),
                              entrypoint=("/docker-entry.sh",),
                              env=("PATH=/usr/bin", "NGINX_VERSION=1.27"), working_dir="/srv",
                              exposed_ports=("80/tcp",), stop_signal="SIGQUIT", user="nginx",
                              labels={"maintainer": "moorage"})
IMAGE_CONFIG = msgspec.structs.replace(IMAGE_CONFIG_V1, volumes=("/var/cache/nginx",))
CONFIG_V5 = ContainerConfig(image="nginx:1.27", cmd=("nginx",), entrypoint=("/init",),
                            env=("A=1",), labels={"app": "web"}, working_dir="/srv", user="1000",
                            stop_signal="SIGTERM", stop_timeout=5, hostname="web-1",
                            exposed_ports=("80/tcp", "443/tcp"), tty=True)
CONFIG = msgspec.structs.replace(CONFIG_V5, volumes=("/data",), open_stdin=True, stdin_once=True,
                                 attach_stdin=True, attach_stdout=True, attach_stderr=True)
HOST_V1 = HostConfig(network_mode="backend",
                     port_bindings={"80/tcp": (PortBinding(host_ip="0.0.0.0",
                                                           host_port="8080"),)},
                     restart_policy=RestartPolicy(name="on-failure", maximum_retry_count=3),
                     auto_remove=True, memory=64 * 1024 * 1024, pids_limit=100,
                     nano_cpus=500_000_000)
HOST_V2 = msgspec.structs.replace(HOST_V1, cap_add=("CAP_NET_ADMIN",), cap_drop=("ALL",),
                                  security_opt=("no-new-privileges",))
HOST_V3 = msgspec.structs.replace(HOST_V2, readonly_rootfs=True)
HOST_V4 = msgspec.structs.replace(
    HOST_V3, privileged=True, tmpfs={"/run": "size=64m"}, sysctls={"net.ipv4.ip_forward": "1"},
    devices=(DeviceMapping(path_on_host="/dev/fuse", path_in_container="/dev/fuse",
                           cgroup_permissions="rw"),),
    device_cgroup_rules=("c 10:200 rwm",), group_add=("audio",), pid_mode="host",
    ipc_mode="shareable", uts_mode="host", cgroupns_mode="private", init=True, runtime="runc",
    isolation="default")
HOST_V5 = msgspec.structs.replace(
    HOST_V4, memory_swap=128 * 1024 * 1024, memory_swappiness=10,
    memory_reservation=32 * 1024 * 1024, oom_kill_disable=True, cpu_shares=512, cpu_period=50_000,
    cpu_quota=25_000, cpuset_cpus="0-1", cpuset_mems="0", blkio_weight=300,
    ulimits=(Ulimit(name="nofile", soft=1024, hard=2048),), shm_size=128 * 1024 * 1024)
HOST_V6 = msgspec.structs.replace(
    HOST_V5, log_config=LogConfig(type="none", config={"max-size": "1k", "max-file": "3"}))
HOST = msgspec.structs.replace(
    HOST_V6, binds=("/srv:/srv:ro", "data:/data"), volumes_from=("db:ro",),
    mounts=(Mount(type="bind", source="/etc", target="/host-etc", read_only=True,
                  propagation="rslave", no_copy=True, labels={"a": "b"}, driver="local",
                  tmpfs_size=1024, tmpfs_mode=0o700),))
MOUNT_POINT = MountPoint(type="volume", destination="/data", name="data", source="/h",
                         driver="local", mode="z", rw=False, propagation="rprivate", copy=True,
                         create_source=True, tmpfs_options="size=1k")
SETTINGS = EndpointSettings(aliases=("web",), ipv4_address="10.213.9.5",
                            mac_address="02:42:0a:d5:09:05")
NETWORKING = Networking(endpoints={"appnet": SETTINGS}, dns=("10.0.0.53",),
                        dns_search=("example.com",), dns_options=("ndots:2",),
                        extra_hosts=("db:10.0.0.9",), links=("db:database",))
NET_PLAN = NetPlan(embedded_dns=True, dns=("10.0.0.53",), dns_search=("example.com",),
                   dns_options=("ndots:2",), extra_hosts=("db:10.0.0.9",),
                   links=(LinkTarget(alias="database", name="/web/database", hostname="db1",
                                     ip="10.213.9.6", ports=("5432/tcp",),
                                     env=("DATABASE_NAME=/web/database",)),),
                   parent_name="web", shared_from=CID, shared_hostname="donor")
NET_ID = "d" * 64
APPNET = NetworkSpec(name="appnet", subnet="10.213.9.0/24", gateway="10.213.9.1",
                     bridge="mbdddddddddddd")
NETWORK_INFO_V1 = NetworkInfo(id=NET_ID, created=1_700_000_000_000_000_000,
                              labels={"team": "a"}, internal=True, ip_range="10.213.9.128/25",
                              options={"com.docker.network.bridge.name": "appnet0"},
                              subnet_given=False)
NETWORK_INFO = msgspec.structs.replace(NETWORK_INFO_V1, shards=3)
DIGEST = "nginx@sha256:" + "cd" * 32

EXEC_ID = "abcdef0123456789" * 4
EXEC_CONFIG = ExecConfig(cmd=("sh", "-c", "ls"), env=("A=1",), user="nobody", working_dir="/srv",
                         tty=True, attach_stdin=True, attach_stdout=True, attach_stderr=True,
                         privileged=True, detach_keys="ctrl-x")

EVENTS: dict[str, e.Event] = {
    "NetworkDefined": e.NetworkDefined(network=NETWORK),
    "ImageRegistered": e.ImageRegistered(image_id=IMAGE_ID, repo_tags=("nginx:1.27",),
                                         config=IMAGE_CONFIG, layers=("sha256:" + "ab" * 32,),
                                         size=1234, created=1_700_000_000, origin="commit",
                                         repo_digests=(DIGEST,), ref="nginx:1.27"),
    "ImagePushed": e.ImagePushed(image_id=IMAGE_ID, ref="reg.example/app:1",
                                 repo_digest="reg.example/app@sha256:" + "cd" * 32),
    "ImageActionNoted": e.ImageActionNoted(action="save", image_id=IMAGE_ID,
                                           attributes={"name": "nginx:1.27"}),
    "VolumeCreated": e.VolumeCreated(name="data", driver="flocker", labels={"a": "b"},
                                     options={"type": "tmpfs"}, created=1_700_000_000_000),
    "VolumeRemoved": e.VolumeRemoved(name="data", driver="flocker"),
    "NameReserved": e.NameReserved(name="web", holder=CID),
    "NameReleased": e.NameReleased(name="web", holder=CID),
    "VolumeMounted": e.VolumeMounted(name="data", driver="local", destination="/data",
                                     rw=False, propagation="rprivate"),
    "VolumeUnmounted": e.VolumeUnmounted(name="data", driver="local"),
    "NetworkCreated": e.NetworkCreated(network=APPNET, info=NETWORK_INFO),
    "NetworkRemoved": e.NetworkRemoved(network_id=NET_ID, name="appnet", bridge="mbdddddddddddd",
                                       subnet="10.213.9.0/24"),
    "NetworksPruned": e.NetworksPruned(names=("appnet",)),
    "NetworkingConfigured": e.NetworkingConfigured(networking=NETWORKING),
    "EndpointReserved": e.EndpointReserved(generation=2, endpoint=ENDPOINT),
    "EndpointReleased": e.EndpointReleased(generation=2, network="appnet", error="join failed"),
    "LinkAdded": e.LinkAdded(parent=CID, child="c" * 64, alias="database"),
    "LinkRemoved": e.LinkRemoved(parent=CID, alias="database"),
    "ImageTagged": e.ImageTagged(image_id=IMAGE_ID, tag="nginx:stable"),
    "ContainerCommitted": e.ContainerCommitted(image_id=IMAGE_ID, image_ref="web:snap",
                                               comment="after setup"),
    "ContainerActionNoted": e.ContainerActionNoted(action="resize",
                                                   attributes={"height": "24", "width": "80"}),
    "ImageRemoved": e.ImageRemoved(image_id=IMAGE_ID, untagged=("nginx:1.27",), deleted=False),
    "ContainerCreated": e.ContainerCreated(name="web", image="nginx:1.27", image_id=IMAGE_ID,
                                           config=CONFIG, host_config=HOST,
                                           created=1_700_000_000_000_000_000,
                                           mounts=(MOUNT_POINT,)),
    "ContainerRenamed": e.ContainerRenamed(old_name="web", new_name="api"),
    "HostBooted": e.HostBooted(boot_id="5f1c2d7e-9a43-4b8e-a1f0-3c6d2e8b9a17",
                               previous="0e2b4a6c-8d1f-4e3a-b5c7-9f0a1b2c3d4e"),
    "HostJoined": e.HostJoined(host="h1", labels={"zone": "a"}, capacity=20,
                               subnet="10.77.1.0/24", bridge="moor0"),
    "HostLost": e.HostLost(host="h1"),
    "HostReturned": e.HostReturned(host="h1"),
    "StartInitiated": e.StartInitiated(generation=2, endpoint=ENDPOINT, manual=False,
                                       restart=True),
    "RootfsMounted": e.RootfsMounted(generation=2, rootfs="/run/moor/rootfs"),
    "SandboxCreated": e.SandboxCreated(generation=2, sandbox_key="/run/netns/moor"),
    "NetworkConnected": e.NetworkConnected(generation=2, endpoint=ENDPOINT),
    "ContainerStarted": e.ContainerStarted(generation=2, pid=4242, started_at=17),
    "ContainerRestarted": e.ContainerRestarted(generation=2),
    "StartFailed": e.StartFailed(generation=2, step="spawn", error="exec: no such file",
                                 exit_code=127),
    "SignalRequested": e.SignalRequested(generation=2, signal=15, purpose="stop", timeout=10,
                                         cancels_restart=False),
    "NetworkDisconnected": e.NetworkDisconnected(generation=2, network="backend"),
    "ContainerOOMKilled": e.ContainerOOMKilled(generation=2),
    "ContainerDied": e.ContainerDied(generation=2, exit_code=137, finished_at=18,
                                     oom_killed=True, error="killed"),
    "ContainerStopped": e.ContainerStopped(generation=2),
    "LogCompacted": e.LogCompacted(cutoff_ms=1_700_000_000_000, retain_ms=86_400_000),
    "RestartFailed": e.RestartFailed(generation=2, error="no available addresses on this pool"),
    "RemovalStarted": e.RemovalStarted(force=True, volumes=True),
    "ContainerMarkedDead": e.ContainerMarkedDead(),
    "RemovalFailed": e.RemovalFailed(error="device or resource busy"),
    "ContainerDestroyed": e.ContainerDestroyed(name="web"),
    "RestartScheduled": e.RestartScheduled(generation=2, delay_ms=200, restart_count=3,
                                           due=1_700_000_000_200_000_000),
    "DriftObserved": e.DriftObserved(container_id="c" * 64, resource="netns",
                                     detail="sandbox missing; released"),
    "CommandRejected": e.CommandRejected(command="CreateContainer", status=403,
                                         message="authorization denied by policy: principal "
                                                 "ci may not create a container with "
                                                 "--privileged (rule privileged)",
                                         rule="privileged"),
    "ReportIgnored": e.ReportIgnored(report="ReportMounted", generation=1,
                                     reason="stale generation (current 2)"),
    "FreezeRequested": e.FreezeRequested(generation=2, frozen=True),
    "ContainerPaused": e.ContainerPaused(generation=2),
    "ContainerUnpaused": e.ContainerUnpaused(generation=2),
    "FreezeFailed": e.FreezeFailed(generation=2, frozen=False, error="thaw: busy"),
    "ExecCreated": e.ExecCreated(exec_id=EXEC_ID, config=EXEC_CONFIG),
    "ExecStarted": e.ExecStarted(exec_id=EXEC_ID, generation=2, detach=True),
    "ExecDied": e.ExecDied(exec_id=EXEC_ID, exit_code=3),
    "ContainerUpdated": e.ContainerUpdated(host_config=HOST, generation=2),
}

COMMANDS: dict[str, c.Command] = {
    "DefineNetwork": c.DefineNetwork(network=NETWORK),
    "RegisterImage": c.RegisterImage(image_id=IMAGE_ID, repo_tags=("nginx:1.27",),
                                     config=IMAGE_CONFIG, layers=("sha256:" + "ab" * 32,),
                                     size=1234, created=1_700_000_000, origin="pull",
                                     repo_digests=(DIGEST,), source_ref="nginx:1.27"),
    "CommitContainer": c.CommitContainer(ref="web", image_id=IMAGE_ID, repo_tags=("web:snap",),
                                         config=IMAGE_CONFIG, layers=("sha256:" + "ab" * 32,),
                                         size=1234, created=1_700_000_000, origin="build",
                                         repo_digests=(DIGEST,), source_ref="web",
                                         comment="after setup"),
    "TagImage": c.TagImage(ref="nginx:1.27", tag="nginx:stable"),
    "RecordImagePush": c.RecordImagePush(ref="nginx:1.27", pushed="reg.example/app:1",
                                         repo_digest="reg.example/app@sha256:" + "cd" * 32),
    "NoteImageAction": c.NoteImageAction(action="save", ref="nginx:1.27",
                                         attributes={"name": "nginx:1.27"}),
    "CreateVolume": c.CreateVolume(name="data", driver="local", labels={"a": "b"},
                                   options={"type": "tmpfs"}),
    "RemoveVolume": c.RemoveVolume(name="data", force=True),
    "ReserveName": c.ReserveName(name="web", holder=CID),
    "ReleaseName": c.ReleaseName(name="web", holder=CID),
    "CreateNetwork": c.CreateNetwork(name="appnet", network_id=NET_ID, subnet="10.213.9.0/24",
                                     gateway="10.213.9.1", ip_range="10.213.9.128/25",
                                     labels={"team": "a"}, internal=True,
                                     options={"com.docker.network.bridge.name": "appnet0"},
                                     subnet_given=False, shards=3),
    "RemoveNetwork": c.RemoveNetwork(network="appnet"),
    "PruneNetworks": c.PruneNetworks(labels=("team",), not_labels=("keep",),
                                     until=1_700_000_000_000_000_000),
    "ConnectNetwork": c.ConnectNetwork(ref="web", network="appnet", settings=SETTINGS),
    "DisconnectNetwork": c.DisconnectNetwork(ref="web", network="appnet", force=True),
    "RemoveLink": c.RemoveLink(name="/web/database"),
    "ReportNetworkJoined": c.ReportNetworkJoined(generation=2, network="appnet",
                                                 endpoint_id="ep-9", error="EEXIST"),
    "NoteContainerAction": c.NoteContainerAction(ref="web", action="top",
                                                 attributes={"ps_args": "-ef"}),
    "RemoveImage": c.RemoveImage(ref="nginx:1.27", force=True),
    "CreateContainer": c.CreateContainer(config=CONFIG, name="web", host_config=HOST,
                                         networking=NETWORKING, shards=3),
    "StartContainer": c.StartContainer(ref="web"),
    "StopContainer": c.StopContainer(ref="web", timeout=3, signal="SIGINT"),
    "KillContainer": c.KillContainer(ref="web", signal="HUP"),
    "RestartContainer": c.RestartContainer(ref="web", timeout=0, signal="SIGQUIT"),
    "RemoveContainer": c.RemoveContainer(ref="web", force=True, volumes=True),
    "RenameContainer": c.RenameContainer(ref="web", new_name="api"),
    "ReportMounted": c.ReportMounted(generation=3, rootfs="/run/moor/rootfs"),
    "ReportSandbox": c.ReportSandbox(generation=3, sandbox_key="/run/netns/moor"),
    "ReportEndpoint": c.ReportEndpoint(generation=3, endpoint_id="ep-3"),
    "ReportProcessStarted": c.ReportProcessStarted(generation=3, pid=77, started_at=19),
    "ReportProcessExited": c.ReportProcessExited(generation=3, exit_code=1, finished_at=20,
                                                 oom_killed=True, pid=77),
    "ReportStepFailed": c.ReportStepFailed(generation=3, step="endpoint", error="EEXIST",
                                           exit_code=126),
    "ReportRemoved": c.ReportRemoved(generation=3),
    "ResumeRestart": c.ResumeRestart(generation=2),
    "CompactLog": c.CompactLog(retain_ms=86_400_000),
    "ReportDrift": c.ReportDrift(resource="netns", detail="sandbox missing", generation=3),
    "ReportHostBooted": c.ReportHostBooted(boot_id="5f1c2d7e-9a43-4b8e-a1f0-3c6d2e8b9a17"),
    "JoinHost": c.JoinHost(host="h1", labels={"zone": "a"}, capacity=20, bridge="moor0"),
    "MarkHostLost": c.MarkHostLost(host="h1", losses=2),
    "MarkHostReturned": c.MarkHostReturned(host="h1", losses=3),
    "DropLostContainer": c.DropLostContainer(generation=4),
    "RestoreContainer": c.RestoreContainer(boot_id="5f1c2d7e-9a43-4b8e-a1f0-3c6d2e8b9a17",
                                           generation=3, exit_code=137,
                                           finished_at=1_700_000_000_000_000_020,
                                           oom_killed=True, pid=77),
    "PauseContainer": c.PauseContainer(ref="web"),
    "UnpauseContainer": c.UnpauseContainer(ref="web"),
    "CreateExec": c.CreateExec(ref="web", exec_id=EXEC_ID, config=EXEC_CONFIG),
    "StartExec": c.StartExec(exec_id=EXEC_ID, detach=True),
    "ReportFrozen": c.ReportFrozen(generation=2, frozen=True, error="freeze: busy"),
    "ReportExecExited": c.ReportExecExited(exec_id=EXEC_ID, exit_code=3),
    "UpdateContainer": c.UpdateContainer(ref="web", resources=HOST, pids_limit=50,
                                         restart_policy=RestartPolicy(name="on-failure",
                                                                      maximum_retry_count=2)),
}

# The host hand-offs, by Struct name: the value, and how its reader decodes the file.
HANDOFFS: dict[str, tuple[Any, Callable[[bytes], Any]]] = {
    # An rq job's argument: rq's JSONSerializer loads it, the worker types it (CODEC.plan).
    # Travels inside StartPlan.joins; its own file pins its field names.
    "Donor": (saga.Donor(container_id=CID, pid=4242),
              lambda data: msgspec.json.decode(data, type=saga.Donor)),
    "StartPlan": (saga.StartPlan(container_id=CID, generation=2, name="web",
                                 image_id=IMAGE_ID, layers=("sha256:" + "ab" * 32,),
                                 config=CONFIG, host_config=HOST, endpoint=ENDPOINT,
                                 network=NETWORK, steps=("endpoint", "spawn"),
                                 joins={"ipc": saga.Donor(container_id=CID, pid=4242)},
                                 mounts=(MOUNT_POINT,), net=NET_PLAN),
                  lambda data: CODEC.plan(JSONSerializer.loads(data))),
    "SpawnResult": (runs.SpawnResult(pid=4242, supervisor_pid=4241,
                                     started_at_ns=1_700_000_000_000_000_017),
                    CODEC.spawn_reply),
    "SpawnFailure": (runs.SpawnFailure(container_exit_code=127,
                                       message="exec: \"nope\": executable file not found "
                                               "in $PATH"),
                     CODEC.spawn_reply),
    "ExitStatus": (runs.ExitStatus(exit_code=137, signal=9, oom_killed=True, pid=4242,
                                   started_at_ns=1_700_000_000_000_000_017,
                                   finished_at_ns=1_700_000_000_000_000_018,
                                   error="killed", generation=2),
                   CODEC.exit_status),
    "StopRequest": (runs.StopRequest(signal=15, deadline_ns=123_456_789_000,
                                     started_at_ns=1_700_000_000_000_000_017),
                    CODEC.stop_request),
}

ENVELOPE = c.Envelope(command_id="cmd-0001", container_id=CID, issued_at=1_700_000_000_123,
                      actor="cli:root", reason="user", causation_id="cmd-0000",
                      correlation_id="corr-1", schema=1, reply=True)
RESULT = CommandResult(command_id="cmd-0001", ok=False, status=409, message="conflict",
                       container_id=CID, version=7, events=("CommandRejected",))


# A record with every meta field set, the authenticated principal included: the per-tag
# goldens above keep the meta records had before principals (`principal` omitted).
PRINCIPAL_RECORD = e.EventRecord(
    meta=e.EventMeta(container_id=CID, version=7, command_id="cmd-0001",
                     at=1_700_000_000_123, principal="alice", actor="bob", reason="user",
                     correlation_id="corr-1", schema=1),
    event=e.ContainerStopped(generation=2))


# Later shapes of a shipped event whose golden must stay as it was shipped: the sample in
# EVENTS keeps decoding its file, and the variant (its own golden, under events/variants)
# uses the fields added since. "<tag>-<what was added>".
EVENT_VARIANTS: dict[str, e.Event] = {
    "ContainerCreated-host": msgspec.structs.replace(EVENTS["ContainerCreated"], host="h1"),
}


def record_for(tag: str) -> e.EventRecord:
    """Wrap an event (or a variant, by name) in the envelope it is stored with."""
    meta = e.EventMeta(container_id=CID, version=7, command_id="cmd-0001", at=1_700_000_000_123,
                       actor="reducer", reason="user", correlation_id="corr-1", schema=1)
    return e.EventRecord(meta=meta, event=EVENTS[tag] if tag in EVENTS else EVENT_VARIANTS[tag])


def tags_of(union: Any) -> set[str]:
    """Return the tags of a tagged union of Structs."""
    return {cls.__struct_config__.tag for cls in typing.get_args(union)}


def golden_files() -> dict[Path, bytes]:
    """Return every golden file with the bytes the current code would write for it."""
    files: dict[Path, bytes] = {}
    for tag in EVENTS:
        files[GOLDEN / "events" / f"{tag}.msgpack"] = CODEC.encode(record_for(tag))
        files[GOLDEN / "events" / f"{tag}.json"] = CODEC.json(record_for(tag)) + b"\n"
    for name in EVENT_VARIANTS:
        files[GOLDEN / "events" / "variants" / f"{name}.msgpack"] = CODEC.encode(record_for(name))
        files[GOLDEN / "events" / "variants" / f"{name}.json"] = \
            CODEC.json(record_for(name)) + b"\n"
    for tag, cmd in COMMANDS.items():
        files[GOLDEN / "commands" / f"{tag}.msgpack"] = CODEC.encode(cmd)
    for name, (value, _) in HANDOFFS.items():
        files[GOLDEN / "host" / f"{name}.json"] = CODEC.json(value) + b"\n"
    files[GOLDEN / "envelope.msgpack"] = CODEC.encode(ENVELOPE)
    files[GOLDEN / "result.msgpack"] = CODEC.encode(RESULT)
    files[GOLDEN / "record.msgpack"] = CODEC.encode(PRINCIPAL_RECORD)
    files[GOLDEN / "record.json"] = CODEC.json(PRINCIPAL_RECORD) + b"\n"
    return files


def write_missing_golden_files() -> list[Path]:
    """Write the golden files that do not exist yet; never touch a shipped one."""
    written = []
    for path, data in golden_files().items():
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
    return written


@pytest.fixture(scope="module", autouse=True)
def _regenerate() -> None:
    if REGEN:
        write_missing_golden_files()


def read(path: Path) -> bytes:
    if not path.exists():
        pytest.fail(f"missing golden file {path.relative_to(GOLDEN)}: run with "
                    "MOOR_REGEN_GOLDEN=1 once and check the file in")
    return path.read_bytes()


@pytest.mark.parametrize("tag", sorted(EVENTS))
def test_event_golden_msgpack(tag: str) -> None:
    assert CODEC.record(read(GOLDEN / "events" / f"{tag}.msgpack")) == record_for(tag)


@pytest.mark.parametrize("tag", sorted(EVENTS))
def test_event_golden_json(tag: str) -> None:
    assert CODEC.record_json(read(GOLDEN / "events" / f"{tag}.json")) == record_for(tag)


@pytest.mark.parametrize("name", sorted(EVENT_VARIANTS))
def test_event_variant_goldens(name: str) -> None:
    base = GOLDEN / "events" / "variants" / name
    assert CODEC.record(read(base.with_suffix(".msgpack"))) == record_for(name)
    assert CODEC.record_json(read(base.with_suffix(".json"))) == record_for(name)


# Records as an earlier release wrote them: they must keep decoding to the same fact, the
# fields added since taking their defaults (schema evolution: new fields get defaults).
LEGACY: dict[str, e.Event] = {
    # Before CommandRejected.rule (the admission policy's rules).
    "CommandRejected-v1": e.CommandRejected(command="StartContainer", status=409,
                                            message="container is marked for removal and "
                                                    "cannot be started"),
    "SignalRequested-v1": e.SignalRequested(generation=2, signal=15, purpose="stop",
                                            timeout=10, cancels_restart=True),
    # Before CapAdd, CapDrop and SecurityOpt.
    "ContainerCreated-v1": e.ContainerCreated(name="web", image="nginx:1.27", image_id=IMAGE_ID,
                                              config=CONFIG_V5, host_config=HOST_V1,
                                              created=1_700_000_000_000_000_000),
    # Before ReadonlyRootfs.
    "ContainerCreated-v2": e.ContainerCreated(name="web", image="nginx:1.27", image_id=IMAGE_ID,
                                              config=CONFIG_V5, host_config=HOST_V2,
                                              created=1_700_000_000_000_000_000),
    # Before Privileged, Tmpfs, Sysctls, Devices and the namespace options.
    "ContainerCreated-v3": e.ContainerCreated(name="web", image="nginx:1.27", image_id=IMAGE_ID,
                                              config=CONFIG_V5, host_config=HOST_V3,
                                              created=1_700_000_000_000_000_000),
    # Before the resource options (swap, reservation, CPU shares and CFS, cpuset, ulimits…).
    "ContainerCreated-v4": e.ContainerCreated(name="web", image="nginx:1.27", image_id=IMAGE_ID,
                                              config=CONFIG_V5, host_config=HOST_V4,
                                              created=1_700_000_000_000_000_000),
    # Before LogConfig.
    "ContainerCreated-v5": e.ContainerCreated(name="web", image="nginx:1.27", image_id=IMAGE_ID,
                                              config=CONFIG_V5, host_config=HOST_V5,
                                              created=1_700_000_000_000_000_000),
    "ContainerUpdated-v5": e.ContainerUpdated(host_config=HOST_V5, generation=2),
    # Before volumes and mounts, attach's stdin fields, and networking (issues 10-11).
    "ContainerCreated-v6": e.ContainerCreated(name="web", image="nginx:1.27", image_id=IMAGE_ID,
                                              config=CONFIG_V5, host_config=HOST_V6,
                                              created=1_700_000_000_000_000_000),
    "ContainerUpdated-v6": e.ContainerUpdated(host_config=HOST_V6, generation=2),
    # Before shards (each shard's share of a user network's addresses).
    "NetworkCreated-v1": e.NetworkCreated(network=APPNET, info=NETWORK_INFO_V1),
    "RemovalStarted-v1": e.RemovalStarted(force=True),
    # Before ImageRegistered.origin (commit's image `create`).
    "ImageRegistered-v1": e.ImageRegistered(image_id=IMAGE_ID, repo_tags=("nginx:1.27",),
                                            config=IMAGE_CONFIG_V1,
                                            layers=("sha256:" + "ab" * 32,), size=1234,
                                            created=1_700_000_000),
}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_legacy_event_goldens_still_decode(name: str) -> None:
    tag = name.partition("-")[0]
    meta = record_for(tag).meta
    for suffix, decode in ((".msgpack", CODEC.record), (".json", CODEC.record_json)):
        record = decode(read(GOLDEN / "legacy" / f"{name}{suffix}"))
        assert record == e.EventRecord(meta=meta, event=LEGACY[name])


# Commands and host files as an earlier release wrote them (a supervisor outlives an
# upgrade of its worker, so its reports and exit.json meet the newer reader).
LEGACY_WIRE: dict[str, tuple[Any, Callable[[bytes], Any]]] = {
    # Before shards.
    "CreateNetwork-v1.msgpack": (
        c.CreateNetwork(name="appnet", network_id=NET_ID, subnet="10.213.9.0/24",
                        gateway="10.213.9.1", ip_range="10.213.9.128/25", labels={"team": "a"},
                        internal=True, options={"com.docker.network.bridge.name": "appnet0"},
                        subnet_given=False), CODEC.command),
    "ReportProcessExited-v1.msgpack": (
        c.ReportProcessExited(generation=3, exit_code=1, finished_at=20, oom_killed=True,
                              pid=0), CODEC.command),
    "ExitStatus-v1.json": (
        runs.ExitStatus(exit_code=137, signal=9, oom_killed=True, pid=4242,
                        started_at_ns=1_700_000_000_000_000_017,
                        finished_at_ns=1_700_000_000_000_000_018, error="killed",
                        generation=0), CODEC.exit_status),
    # Before CapAdd, CapDrop and SecurityOpt (a queued start plan meets a newer worker).
    "CreateContainer-v1.msgpack": (
        c.CreateContainer(config=CONFIG_V5, name="web", host_config=HOST_V1), CODEC.command),
    "StartPlan-v1.json": (
        saga.StartPlan(container_id=CID, generation=2, name="web", image_id=IMAGE_ID,
                       layers=("sha256:" + "ab" * 32,), config=CONFIG_V5, host_config=HOST_V1,
                       endpoint=ENDPOINT, network=NETWORK, steps=("endpoint", "spawn")),
        lambda data: CODEC.plan(JSONSerializer.loads(data))),
    # Before ReadonlyRootfs.
    "CreateContainer-v2.msgpack": (
        c.CreateContainer(config=CONFIG_V5, name="web", host_config=HOST_V2), CODEC.command),
    "StartPlan-v2.json": (
        saga.StartPlan(container_id=CID, generation=2, name="web", image_id=IMAGE_ID,
                       layers=("sha256:" + "ab" * 32,), config=CONFIG_V5, host_config=HOST_V2,
                       endpoint=ENDPOINT, network=NETWORK, steps=("endpoint", "spawn")),
        lambda data: CODEC.plan(JSONSerializer.loads(data))),
    # Before Privileged, Tmpfs, Sysctls, Devices and the namespace options.
    "CreateContainer-v3.msgpack": (
        c.CreateContainer(config=CONFIG_V5, name="web", host_config=HOST_V3), CODEC.command),
    "StartPlan-v3.json": (
        saga.StartPlan(container_id=CID, generation=2, name="web", image_id=IMAGE_ID,
                       layers=("sha256:" + "ab" * 32,), config=CONFIG_V5, host_config=HOST_V3,
                       endpoint=ENDPOINT, network=NETWORK, steps=("endpoint", "spawn")),
        lambda data: CODEC.plan(JSONSerializer.loads(data))),
    # Before the resource options.
    "CreateContainer-v4.msgpack": (
        c.CreateContainer(config=CONFIG_V5, name="web", host_config=HOST_V4), CODEC.command),
    "StartPlan-v4.json": (
        saga.StartPlan(container_id=CID, generation=2, name="web", image_id=IMAGE_ID,
                       layers=("sha256:" + "ab" * 32,), config=CONFIG_V5, host_config=HOST_V4,
                       endpoint=ENDPOINT, network=NETWORK, steps=("endpoint", "spawn"),
                       joins={"ipc": saga.Donor(container_id=CID, pid=4242)}),
        lambda data: CODEC.plan(JSONSerializer.loads(data))),
    # Before LogConfig.
    "CreateContainer-v5.msgpack": (
        c.CreateContainer(config=CONFIG_V5, name="web", host_config=HOST_V5), CODEC.command),
    "UpdateContainer-v5.msgpack": (
        c.UpdateContainer(ref="web", resources=HOST_V5, pids_limit=50,
                          restart_policy=RestartPolicy(name="on-failure", maximum_retry_count=2)),
        CODEC.command),
    "StartPlan-v5.json": (
        saga.StartPlan(container_id=CID, generation=2, name="web", image_id=IMAGE_ID,
                       layers=("sha256:" + "ab" * 32,), config=CONFIG_V5, host_config=HOST_V5,
                       endpoint=ENDPOINT, network=NETWORK, steps=("endpoint", "spawn"),
                       joins={"ipc": saga.Donor(container_id=CID, pid=4242)}),
        lambda data: CODEC.plan(JSONSerializer.loads(data))),
    # Before volumes and mounts, attach's stdin fields, networking and image origins.
    "CreateContainer-v6.msgpack": (
        c.CreateContainer(config=CONFIG_V5, name="web", host_config=HOST_V6), CODEC.command),
    # Before shards (the deployment's shard count a generated name depends on).
    "CreateContainer-v7.msgpack": (
        c.CreateContainer(config=CONFIG, name="web", host_config=HOST, networking=NETWORKING),
        CODEC.command),
    "UpdateContainer-v6.msgpack": (
        c.UpdateContainer(ref="web", resources=HOST_V6, pids_limit=50,
                          restart_policy=RestartPolicy(name="on-failure", maximum_retry_count=2)),
        CODEC.command),
    "StartPlan-v6.json": (
        saga.StartPlan(container_id=CID, generation=2, name="web", image_id=IMAGE_ID,
                       layers=("sha256:" + "ab" * 32,), config=CONFIG_V5, host_config=HOST_V6,
                       endpoint=ENDPOINT, network=NETWORK, steps=("endpoint", "spawn"),
                       joins={"ipc": saga.Donor(container_id=CID, pid=4242)}),
        lambda data: CODEC.plan(JSONSerializer.loads(data))),
    "RemoveContainer-v1.msgpack": (c.RemoveContainer(ref="web", force=True), CODEC.command),
    "RegisterImage-v1.msgpack": (
        c.RegisterImage(image_id=IMAGE_ID, repo_tags=("nginx:1.27",), config=IMAGE_CONFIG_V1,
                        layers=("sha256:" + "ab" * 32,), size=1234, created=1_700_000_000),
        CODEC.command),
}


@pytest.mark.parametrize("name", sorted(LEGACY_WIRE))
def test_legacy_wire_goldens_still_decode(name: str) -> None:
    value, decode = LEGACY_WIRE[name]
    assert decode(read(GOLDEN / "legacy" / name)) == value


@pytest.mark.parametrize("tag", sorted(COMMANDS))
def test_command_golden_msgpack(tag: str) -> None:
    assert CODEC.command(read(GOLDEN / "commands" / f"{tag}.msgpack")) == COMMANDS[tag]


@pytest.mark.parametrize("name", sorted(HANDOFFS))
def test_handoff_golden_json(name: str) -> None:
    value, decode = HANDOFFS[name]
    assert decode(read(GOLDEN / "host" / f"{name}.json")) == value


def handoff_structs() -> set[str]:
    """Return the Structs the host hand-off modules define (their wire types)."""
    return {name for module in (saga, runs) for name in module.__all__
            if isinstance(getattr(module, name), type)
            and issubclass(getattr(module, name), msgspec.Struct)}


def test_every_handoff_has_a_golden() -> None:
    assert set(HANDOFFS) == handoff_structs()
    assert {p.stem for p in (GOLDEN / "host").glob("*.json")} == handoff_structs()
    assert tags_of(runs.SpawnReply) == {"SpawnResult", "SpawnFailure"}


def test_envelope_golden() -> None:
    assert CODEC.envelope(read(GOLDEN / "envelope.msgpack")) == ENVELOPE


def test_principal_record_golden() -> None:
    assert CODEC.record(read(GOLDEN / "record.msgpack")) == PRINCIPAL_RECORD
    assert CODEC.record_json(read(GOLDEN / "record.json")) == PRINCIPAL_RECORD


def test_result_golden() -> None:
    assert CODEC.result(read(GOLDEN / "result.msgpack")) == RESULT


def test_every_event_tag_has_a_golden() -> None:
    assert set(EVENTS) == tags_of(e.Event)
    on_disk = {p.stem for p in (GOLDEN / "events").glob("*.msgpack")}
    assert on_disk == tags_of(e.Event)
    assert {p.stem for p in (GOLDEN / "events").glob("*.json")} == on_disk


def test_every_command_tag_has_a_golden() -> None:
    assert set(COMMANDS) == tags_of(c.Command)
    assert {p.stem for p in (GOLDEN / "commands").glob("*.msgpack")} == tags_of(c.Command)


def test_reports_are_commands() -> None:
    assert tags_of(c.Report) <= tags_of(c.Command)
    assert set(c.REPORT_TYPES) == set(typing.get_args(c.Report))


def defaulted_fields(value: Any, path: str = "") -> list[str]:
    """Return the fields (recursively) a Struct leaves at their default, but `schema`."""
    found = []
    for field in msgspec.structs.fields(value):
        got = getattr(value, field.name)
        where = f"{path}{type(value).__name__}.{field.name}"
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            default = msgspec.NODEFAULT
        if got == default and field.name != "schema":
            found.append(where)
        if isinstance(got, msgspec.Struct):
            found.extend(defaulted_fields(got, where + "/"))
    return found


def test_golden_values_use_every_field() -> None:
    # A golden built from defaults would not notice a field's wire name changing.
    values = (*EVENTS.values(), *COMMANDS.values(), ENVELOPE, RESULT,
              PRINCIPAL_RECORD, *(value for value, _ in HANDOFFS.values()))
    # A field added to a shipped event is used by its variant (EVENT_VARIANTS) instead.
    used = {f"{type(v).__name__}.{f.name}" for v in EVENT_VARIANTS.values()
            for f in msgspec.structs.fields(v)} - {
        f for v in EVENT_VARIANTS.values() for f in defaulted_fields(v)}
    assert [f for v in values for f in defaulted_fields(v) if f not in used] == []


def test_stored_events_accept_unknown_fields() -> None:
    # An old reader must survive a newer writer's extra field.
    data = msgspec.msgpack.encode({"meta": {"command_id": "x", "at": 1, "future": 1},
                                   "event": {"type": "ContainerStopped", "generation": 1,
                                             "future": "yes"}})
    assert CODEC.record(data).event == e.ContainerStopped(generation=1)


def test_commands_forbid_unknown_fields() -> None:
    data = msgspec.msgpack.encode({"type": "StartContainer", "ref": "web", "forse": True})
    with pytest.raises(msgspec.ValidationError):
        CODEC.command(data)


def test_unknown_tag_is_a_decode_error() -> None:
    data = msgspec.msgpack.encode({"meta": {"command_id": "x", "at": 1},
                                   "event": {"type": "ContainerTeleported"}})
    with pytest.raises(msgspec.ValidationError):
        CODEC.record(data)
