"""Volumes and mounts decided by the pure engine: Docker's parsing, texts and references.

Given/when/then through the decider (tests.unit.test_decide's DSL): every `then` also
checks that replaying the records rebuilds the live world.
"""

from __future__ import annotations

import pytest

from commands import schema as c
from commands.mountopts import parse_mount, split_volumes
from engine.core.volumes import anonymous_name, parse_bind
from engine.errors import InvalidParameter
from events import model as e
from events.specs import ANONYMOUS_LABEL, HostConfig, Mount, MountPoint
from projections.views.feed import FeedState, docker_event
from tests.unit.test_decide import A, B, create, exited, given, removed, running


def ctr_with(host: HostConfig | None = None, cid: str = A, name: str = "web",
             volumes: tuple[str, ...] = ()) -> tuple[str, c.Command]:
    return create(name, cid, host=host, volumes=volumes)  # type: ignore[return-value]


def rm(ref: str = "web", volumes: bool = False) -> c.RemoveContainer:
    return c.RemoveContainer(ref=ref, volumes=volumes)


# --- -v parsing (daemon rules) -------------------------------------------------------------

@pytest.mark.parametrize(("raw", "want"), [
    ("/h:/c", MountPoint(type="bind", destination="/c", source="/h", rw=True,
                         propagation="rprivate", create_source=True)),
    ("/h:/c/:ro,rshared", MountPoint(type="bind", destination="/c", source="/h",
                                     mode="ro,rshared", rw=False, propagation="rshared",
                                     create_source=True)),
    ("data:/d", MountPoint(type="volume", destination="/d", name="data", driver="local",
                           mode="z", copy=True)),
    ("data:/d:nocopy", MountPoint(type="volume", destination="/d", name="data",
                                  driver="local", mode="nocopy")),
    ("/anon", MountPoint(type="volume", destination="/anon", driver="local", mode="z",
                         copy=True)),
])
def test_parse_bind(raw: str, want: MountPoint) -> None:
    assert parse_bind(raw) == want


@pytest.mark.parametrize(("raw", "message"), [
    ("/a:/b:/c:/d", "invalid volume specification: '/a:/b:/c:/d'"),
    ("/a:ro", "invalid volume specification: '/a:ro'"),
    ("/a:/b:rw,ro", "invalid mode: rw,ro"),
    ("/a:/b:bogus", "invalid mode: bogus"),
    ("/a:rel", "invalid volume specification: '/a:rel': invalid mount config for type "
               "\"bind\": invalid mount path: 'rel' mount path must be absolute"),
    ("/a:/", "invalid volume specification: '/a:/': invalid specification: destination "
             "can't be '/'"),
    ("x:/d", "volume name is too short, names should be at least two alphanumeric "
             "characters"),
    ("b@d:/d", '"b@d" includes invalid characters for a local volume name, only '
               '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
               "directory, use absolute path"),
])
def test_parse_bind_errors_are_dockers(raw: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as err:
        parse_bind(raw)
    assert err.value.message == message


# --- create resolves mounts, creating the volumes first -------------------------------------

def test_create_resolves_every_kind_and_creates_missing_volumes_first() -> None:
    host = HostConfig(binds=("/srv:/srv:ro", "data:/data"),
                      mounts=(Mount(type="tmpfs", target="/t", tmpfs_size=1024),),
                      tmpfs={"/run": ""})
    got = given().when(ctr_with(host, volumes=("/anon", "/data")))
    anon = anonymous_name(A, "/anon")
    got.then(e.VolumeCreated(name="data", created=got.outcome.records[0].meta.at),
             e.VolumeCreated(name=anon, labels={ANONYMOUS_LABEL: ""},
                             created=got.outcome.records[0].meta.at),
             e.ContainerCreated)
    mounts = {mp.destination: mp for mp in got.container().mounts}
    assert sorted(mounts) == ["/anon", "/data", "/srv", "/t"]  # /data: the bind wins
    assert mounts["/srv"].rw is False and mounts["/t"].tmpfs_options == "size=1024"
    assert mounts["/anon"].name == anon and mounts["/data"].name == "data"
    assert set(got.world.volumes) == {"data", anon}


def test_duplicate_mount_points_are_refused() -> None:
    for host in (HostConfig(binds=("/a:/x", "/b:/x")),
                 HostConfig(binds=("/a:/x",), tmpfs={"/x": ""}),
                 HostConfig(binds=("/a:/x",), mounts=(Mount(type="bind", source="/b",
                                                            target="/x"),))):
        given().when(ctr_with(host)).then((400, "Duplicate mount point: /x"))


def test_mount_config_errors_are_the_daemons() -> None:
    cases = [(Mount(type="bind", target="/x"),
              'invalid mount config for type "bind": field Source must not be empty'),
             (Mount(type="volume", target="/x", read_only=True),
              'invalid mount config for type "volume": must not set ReadOnly mode when '
              "using anonymous volumes"),
             (Mount(type="tmpfs", source="s", target="/x"),
              'invalid mount config for type "tmpfs": field Source must not be specified'),
             (Mount(type="npipe", target="/x"),
              'invalid mount config for type "npipe": mount type unknown'),
             (Mount(type="bind", source="/s"),
              'invalid mount config for type "bind": field Target must not be empty')]
    for mount, message in cases:
        given().when(ctr_with(HostConfig(mounts=(mount,)))).then((400, message))


def test_volumes_from_copies_mounts_with_the_mode() -> None:
    src = ctr_with(HostConfig(binds=("data:/data", "/h:/h")))
    got = given(src).when(ctr_with(HostConfig(volumes_from=("web:ro",)), cid=B, name="bb"))
    got.then(e.ContainerCreated)
    mounts = got.container(B).mounts
    assert [(m.destination, m.rw, m.copy) for m in mounts] == [("/data", False, False),
                                                               ("/h", False, False)]
    given().when(ctr_with(HostConfig(volumes_from=("ghost",)))).then(
        (404, "No such container: ghost"))


# --- references, removal, rm -v -------------------------------------------------------------

def test_a_volume_in_use_is_refused_removal_and_rm_v_takes_anonymous_ones() -> None:
    host = HostConfig(binds=("data:/data",))
    anon = anonymous_name(A, "/anon")
    got = given(ctr_with(host, volumes=("/anon",)))
    got.when(c.RemoveVolume(name="data")).then(
        (409, f"remove data: volume is in use - [{A}]"))
    got.when(rm(volumes=True)).then(e.RemovalStarted(volumes=True), e.ContainerMarkedDead)
    got.when(removed()).then(e.ContainerDestroyed(name="web"), e.VolumeRemoved(name=anon))
    assert set(got.world.volumes) == {"data"}  # named volumes stay
    got.when(c.RemoveVolume(name="data")).then(e.VolumeRemoved(name="data"))
    got.when(c.RemoveVolume(name="data")).then((404, "get data: no such volume"))
    got.when(c.RemoveVolume(name="data", force=True)).then(
        (304, "volume data does not exist"))


def test_rm_without_v_keeps_anonymous_volumes_unless_auto_remove() -> None:
    got = given(ctr_with(volumes=("/anon",)), rm())
    got.when(removed()).then(e.ContainerDestroyed)
    assert anonymous_name(A, "/anon") in got.world.volumes
    auto = given(ctr_with(HostConfig(auto_remove=True), volumes=("/anon",)), rm())
    auto.when(removed()).then(e.ContainerDestroyed, e.VolumeRemoved)


def test_an_anonymous_volume_shared_by_volumes_from_stays() -> None:
    got = given(ctr_with(volumes=("/anon",)),
                ctr_with(HostConfig(volumes_from=("web",)), cid=B, name="bb"),
                rm(volumes=True))
    got.when(removed()).then(e.ContainerDestroyed)  # b still mounts it


def test_create_volume_api_decisions() -> None:
    got = given().when(c.CreateVolume(name="v1", labels={"a": "b"}, options={"type": "tmpfs"}))
    got.then(e.VolumeCreated(name="v1", labels={"a": "b"}, options={"type": "tmpfs"},
                             created=got.outcome.records[0].meta.at))
    got.scenario.when(c.CreateVolume(name="v1")).then((304, "volume v1 already exists"))
    given().when(c.CreateVolume(name="v2", options={"bogus": "1"})).then(
        (400, 'invalid option: "bogus"'))
    given().when(c.CreateVolume(name="v2", driver="flocker")).then(
        (404, 'error looking up volume plugin flocker: plugin "flocker" not found'))


def test_volume_mount_events_surround_the_run_in_dockers_order() -> None:
    steps = running(name="web")
    host_step = ctr_with(HostConfig(binds=("data:/data",)))
    got = given(host_step, *steps[1:])
    kinds = [type(r.event).__name__ for r in got.records]
    assert kinds.index("VolumeMounted") < kinds.index("NetworkConnected")
    got.when(exited(1)).then(e.NetworkDisconnected, e.VolumeUnmounted, e.ContainerDied)
    feed = [docker_event(r, "1-0", FeedState()) for r in got.records]
    mount = next(ev for ev in feed if ev and ev["Type"] == "volume" and
                 ev["Action"] == "mount")
    assert mount["Actor"] == {"ID": "data", "Attributes": {
        "driver": "local", "container": A, "destination": "/data", "read/write": "true",
        "propagation": ""}}


# --- the docker CLI's flag parsing -----------------------------------------------------------

def test_cli_volume_flags() -> None:
    assert split_volumes(["/anon", "./rel:/c", "n:/d:ro"], cwd="/w") == (
        ("/w/rel:/c", "n:/d:ro"), ("/anon",))
    with pytest.raises(InvalidParameter, match="empty section between colons"):
        split_volumes(["/a::/b"], "/")
    assert parse_mount("type=bind,src=/h,dst=/c,readonly,bind-propagation=rslave") == Mount(
        type="bind", source="/h", target="/c", read_only=True, propagation="rslave")
    assert parse_mount("target=/v,volume-nocopy,volume-label=a=b") == Mount(
        type="volume", target="/v", no_copy=True, labels={"a": "b"})
    assert parse_mount("type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=700") == Mount(
        type="tmpfs", target="/t", tmpfs_size=1024 * 1024, tmpfs_mode=0o700)
    with pytest.raises(InvalidParameter, match="cannot mix 'volume-\\*' options with mount "
                                               "type 'bind'"):
        parse_mount("type=bind,src=/h,dst=/c,volume-nocopy")
    with pytest.raises(InvalidParameter, match="target is required"):
        parse_mount("type=volume,src=v")
