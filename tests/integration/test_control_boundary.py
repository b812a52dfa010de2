"""The control boundary against real Redis: ACL users per role on the embedded Redis, the
principal taken from the stream, the inbox kinds, and the admission policy through a real
reducer (issue 9, section 4).

The ACL tests provision a private embedded redis-server (a temporary data root, a unix
socket, Redis 7) exactly as `moor up` does, then speak as each role with the credential
files it wrote. The reducer tests run engine.reducer.Reducer on the session's plain
redis-server (no ACL: the principal comes from the stream either way).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis

from commands import schema as c
from commands.client import Client
from commands.codec import CODEC
from engine.acl import ROLES, ensure_credential, read_credential, user_line
from engine.core.admission import Policy
from engine.errors import Forbidden
from engine.keys import GROUP, Keys, keys_for
from engine.reducer import Reducer
from events import model as e
from events.specs import HostConfig
from moor.embedded import ensure_embedded, stop_embedded
from moor.embedded.acl import provision
from projections.audit import format_entry, replay
from tests.conftest import RedisServer, start_redis
from tests.harness import IMAGE_ID, SUBNET, ReducerThread, busybox, cleanup, fresh_keys
from tests.integration.workload import BASE_NS, builtins, fields_of, generate, pure_fold, xadd_all

ENTRY = {"env": b"x", "cmd": b"y"}
REPO = str(Path(__file__).resolve().parents[2])


# --- ACL users on the embedded Redis ----------------------------------------------------------

class Site:
    """A provisioned embedded Redis under a temporary data root."""

    def __init__(self, root: str, keys: Keys) -> None:
        self.root, self.keys = root, keys
        self.socket = str(Path(root, "redis", "redis.sock"))

    def as_(self, name: str) -> Any:
        """Return a client speaking as a role or principal (its credential file)."""
        user, password = read_credential(str(Path(self.root, "credentials", name)))
        return redis.Redis(unix_socket_path=self.socket, username=user, password=password)

    def anonymous(self) -> Any:
        return redis.Redis(unix_socket_path=self.socket)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    root = tempfile.mkdtemp(prefix="moor-acl-")
    keys = keys_for(prefix="mooracl")
    try:
        server = ensure_embedded(root)
        if int(server.version.split(".")[0]) < 7:
            pytest.fail(f"the embedded Redis is {server.version}: ACL selectors need 7+")
        assert "default user off" in provision(root, keys)
        admin = Site(root, keys).as_("admin")
        admin.sadd(keys.principals, "alice")
        yield Site(root, keys)
    finally:
        stop_embedded(root)
        shutil.rmtree(root, ignore_errors=True)


def noperm(fn: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(redis.exceptions.NoPermissionError):
        fn(*args, **kwargs)


def test_the_default_user_is_disabled_on_the_embedded_redis(site: Site) -> None:
    with pytest.raises(redis.exceptions.AuthenticationError):
        site.anonymous().ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(unix_socket_path=site.socket, username="default", password="").ping()


def test_credentials_are_0600_files_and_users_acl_holds_no_password(site: Site) -> None:
    folder = Path(site.root, "credentials")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for role in ROLES:
        assert stat.S_IMODE((folder / role).stat().st_mode) == 0o600
        password = read_credential(str(folder / role)).password
        assert password not in Path(site.root, "redis", "users.acl").read_text()
    assert stat.S_IMODE(Path(site.root, "redis", "users.acl").stat().st_mode) == 0o600


def test_the_control_user_cannot_write_the_events_the_snapshot_or_the_reports(
        site: Site) -> None:
    k = site.keys
    control = site.as_("control")
    noperm(control.xadd, k.events, {"d": b"forged"})
    noperm(control.hset, k.containers, "a" * 64, b"forged")
    noperm(control.hset, k.versions, "a" * 64, 9)
    noperm(control.hset, k.world, "checkpoint", "0-0")
    noperm(control.hset, k.done, "x", b"forged")
    noperm(control.xadd, k.reports, ENTRY)  # it cannot forge a ProcessExited
    noperm(control.xadd, k.internal, ENTRY)
    noperm(control.xadd, k.inbox("alice").key, ENTRY)  # nor speak as another principal
    noperm(control.rpush, k.outbox, b"job")
    noperm(control.rpush, f"rq:queue:{k.queue}", b"job")  # nor hand the worker a job
    noperm(control.set, k.epoch, 99)
    noperm(control.delete, k.commands)
    noperm(control.xtrim, k.commands, maxlen=0)
    # What it is for: append its commands, read the journal and the snapshot, pop replies.
    assert control.xadd(k.commands, ENTRY)
    assert control.xrange(k.events) == [] and control.hgetall(k.containers) == {}
    assert control.blpop([k.reply("nope")], timeout=0.01) is None


def test_a_worker_user_cannot_append_commands(site: Site) -> None:
    k = site.keys
    worker = site.as_("worker")
    noperm(worker.xadd, k.commands, ENTRY)  # it cannot issue a lifecycle command
    noperm(worker.xadd, k.inbox("alice").key, ENTRY)
    noperm(worker.xadd, k.internal, ENTRY)
    noperm(worker.xadd, k.events, ENTRY)
    noperm(worker.hset, k.containers, "a" * 64, b"forged")
    noperm(worker.hset, k.done, "x", b"forged")
    noperm(worker.delete, k.reports)
    noperm(worker.xgroup_destroy, k.reports, GROUP)
    assert worker.xadd(k.reports, ENTRY)
    assert worker.hgetall(k.containers) == {}
    assert worker.rpush(f"rq:queue:{k.queue}", b"x") and worker.delete(f"rq:queue:{k.queue}")


def test_a_principal_appends_only_to_its_own_stream(site: Site) -> None:
    k = site.keys
    # Made as `moor acl add` makes it: the credential file, then ACL SETUSER as admin.
    words = user_line(k, "alice", ensure_credential(site.root, k, "alice")).split()
    site.as_("admin").execute_command("ACL", "SETUSER", words[1], "reset", *words[2:])
    alice = site.as_("alice")
    assert alice.xadd(k.inbox("alice").key, ENTRY)
    noperm(alice.xadd, k.commands, ENTRY)
    noperm(alice.xadd, k.reports, ENTRY)


def test_the_reducer_user_writes_its_shard_but_not_another_engines(site: Site) -> None:
    k = site.keys
    reducer = site.as_("reducer")
    assert reducer.xadd(k.events, {"d": b"x"}) and reducer.delete(k.events)
    noperm(reducer.xadd, keys_for(prefix="other").events, {"d": b"x"})
    noperm(reducer.flushall)


def test_a_reducer_folds_control_commands_and_worker_reports_under_the_acl(
        site: Site) -> None:
    """The roles can still do their jobs: reducer, control client, worker report, rq."""
    k = site.keys
    reducer = Reducer(site.as_("reducer"), k, block_ms=10)
    assert reducer.try_acquire()
    control = Client(site.as_("control"), k, actor="ops", timeout=10)
    worker = Client(site.as_("worker"), k, actor="worker@test", timeout=10)
    control.send(c.DefineNetwork(network=SUBNET))
    control.send(c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox:latest",)))
    cid = "c" * 64
    control.send(c.CreateContainer(config=busybox()), container_id=cid)
    control.send(c.StartContainer(ref=cid))
    worker.report(cid, c.ReportMounted(generation=1, rootfs="/r"))
    while reducer.step():
        pass
    records = [CODEC.record(f[b"d"]) for _, f in site.as_("control").xrange(k.events)]
    assert [(type(r.event).__name__, r.meta.principal) for r in records] == [
        ("NetworkDefined", "control"), ("ImageRegistered", "control"),
        ("ContainerCreated", "control"), ("StartInitiated", "control"),
        ("RootfsMounted", "worker")]
    assert site.as_("worker").llen(f"rq:queue:{k.queue}") == 1  # the start job, via rq
    reducer.release()


# --- principals and inbox kinds through a real reducer -----------------------------------------

@pytest.fixture
def plain(redis_server: RedisServer) -> Iterator[tuple[Any, Keys]]:
    r = redis.Redis.from_url(redis_server.url)
    keys = fresh_keys()
    yield r, keys
    cleanup(r, keys)
    r.close()


def _env(command_id: str, actor: str, cid: str = "", reply: bool = False) -> c.Envelope:
    return c.Envelope(command_id=command_id, container_id=cid, issued_at=BASE_NS,
                      actor=actor, reply=reply)


def _fold(reducer: Reducer) -> None:
    while reducer.step():
        pass


def _entries(r: Any, keys: Keys) -> list[tuple[str, e.EventRecord]]:
    return [(i.decode(), CODEC.record(f[b"d"])) for i, f in r.xrange(keys.events)]


def _journal(r: Any, keys: Keys) -> list[e.EventRecord]:
    return [record for _, record in _entries(r, keys)]


def test_an_entry_on_commands_alice_is_recorded_as_alice_whatever_actor_it_declares(
        plain: tuple[Any, Keys]) -> None:
    r, keys = plain
    r.sadd(keys.principals, "alice")
    alice = keys.inbox("alice").key
    # Explicit ids: one order across the two streams (a tie within a millisecond has none).
    r.xadd(alice, CODEC.entry(_env("n1", "control"), c.DefineNetwork(network=SUBNET)), id="5-1")
    r.xadd(alice, CODEC.entry(_env("n2", "reducer"), c.RegisterImage(
        image_id=IMAGE_ID, repo_tags=("busybox:latest",))), id="6-1")
    r.xadd(keys.commands, CODEC.entry(_env("n3", "alice"), c.StartContainer(ref="nope")),
           id="7-1")
    reducer = Reducer(r, keys, block_ms=10)
    assert reducer.try_acquire()
    _fold(reducer)
    journal = _journal(r, keys)
    assert [(rec.meta.command_id, rec.meta.principal, rec.meta.actor) for rec in journal] == [
        ("n1", "alice", "control"), ("n2", "alice", "reducer"), ("n3", "control", "alice")]
    # Her command ids are hers: the marks are namespaced, so the same id from the default
    # principal is a command of its own, not a duplicate answered with her result.
    assert r.hexists(keys.done, "alice/n1") and not r.hexists(keys.done, "n1")
    r.xadd(keys.commands, CODEC.entry(_env("n1", "root"), c.StartContainer(ref="nope")))
    _fold(reducer)
    assert r.hexists(keys.done, "n1") and len(_journal(r, keys)) == 4
    reducer.release()
    # A client of hers waits on her mark; replay shows both names.
    with ReducerThread(r, keys, block_ms=10):
        client = Client(r, keys, actor="bob", inbox=keys.inbox("alice"), timeout=10)
        cid = client.create(busybox(), name="hers")
    _, timeline = replay(_entries(r, keys))
    assert "ContainerCreated principal=alice actor=bob " in format_entry(timeline[-1])
    assert r.hget(keys.containers, cid)


def test_a_principal_registered_while_the_reducer_leads_is_read(
        plain: tuple[Any, Keys]) -> None:
    r, keys = plain
    reducer = Reducer(r, keys, block_ms=10, reclaim_ms=0)
    assert reducer.try_acquire()
    r.xadd(keys.inbox("bob").key, CODEC.entry(_env("b1", "bob"),
                                               c.DefineNetwork(network=SUBNET)))
    _fold(reducer)
    assert _journal(r, keys) == []  # not registered: nobody speaks for that stream
    r.sadd(keys.principals, "bob")
    for _ in range(3):
        reducer.step()
    assert [rec.meta.principal for rec in _journal(r, keys)] == ["bob"]
    reducer.release()


def test_a_report_on_a_commands_stream_is_quarantined_and_does_not_shadow_the_real_one(
        plain: tuple[Any, Keys]) -> None:
    r, keys = plain
    cid = "d" * 64
    for item in generate(2, tag="kinds"):
        xadd_all(r, keys, [fields_of(item)])
    r.xadd(keys.commands, CODEC.entry(_env("cr", "ops", cid), c.CreateContainer(
        config=busybox())))
    r.xadd(keys.commands, CODEC.entry(_env("st", "ops"), c.StartContainer(ref=cid)))
    forged = c.ReportProcessStarted(generation=1, pid=1, started_at=1)
    exit_id = "started-" + cid + "-1"
    r.xadd(keys.commands, CODEC.entry(_env(exit_id, "supervisor@x", cid), forged))
    r.xadd(keys.reports, CODEC.entry(_env("rm", "worker@x"), c.RemoveContainer(ref=cid)))
    reducer = Reducer(r, keys, block_ms=10)
    assert reducer.try_acquire()
    _fold(reducer)
    quarantined = {f[b"stream"].decode(): f[b"reason"].decode()
                   for _, f in r.xrange(keys.quarantine)}
    assert quarantined == {
        keys.commands: "ReportProcessStarted is a report: refused on a control stream "
                       "(principal control)",
        keys.reports: "RemoveContainer is not a report: refused on a reports stream "
                      "(principal worker)"}
    assert not r.hexists(keys.done, exit_id) and not r.hexists(keys.done, "rm")
    assert reducer.world.containers[cid].starting  # neither took effect
    # The genuine report, same id, from the reports stream: decided.
    r.xadd(keys.reports, CODEC.entry(_env(exit_id, "worker@x", cid), c.ReportMounted(
        generation=1, rootfs="/r")))
    _fold(reducer)
    assert _journal(r, keys)[-1].event == e.RootfsMounted(generation=1, rootfs="/r")
    assert _journal(r, keys)[-1].meta.principal == "worker"
    reducer.release()


def test_inboxes_are_decided_in_id_order_whatever_the_batch(backend: Any) -> None:
    """Commands and reports interleaved across two streams, read 7 per stream per batch:
    the journal is the pure fold of the one order the ids give."""
    r, keys = backend
    items = generate(400, tag="ord", seed=3)
    xadd_all(r, keys, [fields_of(i) for i in items])
    assert r.xlen(keys.reports) > 50 and r.xlen(keys.commands) > 50
    reducer = Reducer(r, keys, batch=7, block_ms=10)
    assert reducer.try_acquire()
    _fold(reducer)
    world, records, _ = pure_fold(items)
    assert [builtins(rec) for rec in _journal(r, keys)] == [builtins(x) for x in records]
    assert msgspec.to_builtins(reducer.world, order="sorted") == msgspec.to_builtins(
        world, order="sorted")
    reducer.release()


# --- the admission policy through a real reducer ----------------------------------------------

def test_a_refused_privileged_create_is_journaled_with_the_principal_and_the_rule(
        plain: tuple[Any, Keys]) -> None:
    r, keys = plain
    r.sadd(keys.principals, "ci", "ops")
    with ReducerThread(r, keys, block_ms=10, policy=Policy(privileged=("ops",))):
        Client(r, keys, inbox=keys.reducer_inbox(), timeout=10).define_network(SUBNET)
        ops = Client(r, keys, actor="carol", inbox=keys.inbox("ops"), timeout=10)
        ops.register_image(image_id=IMAGE_ID, repo_tags=("busybox:latest",))
        ci = Client(r, keys, actor="dave", inbox=keys.inbox("ci"), timeout=10)
        privileged = HostConfig(privileged=True)
        with pytest.raises(Forbidden) as refused:
            ci.create(busybox(), privileged, name="root-shell")
        assert refused.value.status == 403
        assert refused.value.message == (
            "authorization denied by policy: principal ci (on behalf of dave) may not create "
            "a container with --privileged (rule privileged)")
        ci.create(busybox(), name="plain")  # the rest is allowed
        ops.create(busybox(), privileged, name="allowed")
    journal = _journal(r, keys)
    rejected = [(rec.meta, rec.event) for rec in journal
                if isinstance(rec.event, e.CommandRejected)]
    assert [(meta.principal, meta.actor, event.rule, event.command)
            for meta, event in rejected] == [("ci", "dave", "privileged", "CreateContainer")]
    created = [(rec.event.name, rec.meta.principal) for rec in journal
               if isinstance(rec.event, e.ContainerCreated)]  # type: ignore[union-attr]
    assert created == [("plain", "ci"), ("allowed", "ops")]
    _, timeline = replay(_entries(r, keys))
    line = next(format_entry(t) for t in timeline if t.event_type == "CommandRejected")
    assert "principal=ci actor=dave" in line and "403 [rule privileged]" in line


# --- the same users on an external Redis (README, Control boundary) ----------------------------

def test_moor_acl_print_sets_up_an_external_redis(tmp_path: Path) -> None:
    """`moor acl print | redis-cli`, then `moor acl add`: the roles and a principal work on
    a Redis the engine did not start, with the credential files the command wrote."""
    if shutil.which("redis-cli") is None:
        pytest.fail("redis-cli is missing (Debian's redis-tools, installed with redis-server)")
    server = start_redis(str(tmp_path))
    keys = fresh_keys()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOOR_")}
    env.update(MOOR_DATA_ROOT=str(tmp_path / "data"), MOOR_REDIS_URL=server.url,
               MOOR_PREFIX=keys.prefix)

    def moor(*args: str, **extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "moor.cli", *args], cwd=REPO,
                              env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        lines = moor("acl", "print")
        assert all(line.startswith("ACL ") for line in lines.splitlines())
        applied = subprocess.run(["redis-cli", "-u", server.url], input=lines, text=True,
                                 capture_output=True, timeout=30, check=True).stdout
        assert applied.count("OK") == 5  # four roles and the default user (no aclfile: SAVE)
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis.from_url(server.url).ping()
        moor("acl", "add", "ci")

        def as_(name: str) -> Any:
            user, password = read_credential(str(tmp_path / "data" / "credentials" / name))
            return redis.Redis.from_url(server.url, username=user, password=password)

        noperm(as_("control").xadd, keys.events, ENTRY)
        noperm(as_("ci").xadd, keys.commands, ENTRY)
        noperm(as_("worker").xadd, keys.inbox("ci").key, ENTRY)
        with ReducerThread(as_("reducer"), keys, block_ms=10):
            moor("--actor", "dave", "compact", MOOR_PRINCIPAL="ci")
        (record,) = _journal(as_("control"), keys)
        assert isinstance(record.event, e.LogCompacted)
        assert (record.meta.principal, record.meta.actor) == ("ci", "dave")
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=10)
