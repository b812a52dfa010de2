"""The typed hand-offs between engine, worker and supervisor, and the rules with one home.

- The start plan leaves `react` as a `StartPlan`, crosses the outbox (msgpack) and an rq
  job (JSON, through a real rq Job over fakeredis) and reaches the saga typed and equal.
- The supervisor's exit report is an entry the reducer's own decoders read.
- The saga's step order (`events.saga`) drives the decider and the worker alike.
- `ps`'s human Status words exactly the state `status_of` decides.
"""

from __future__ import annotations

import itertools
from typing import Any

import fakeredis
import pytest
from rq.job import Job as RqJob
from rq.serializers import JSONSerializer

from commands import schema as c
from commands.codec import CODEC
from engine.core.decider import apply_command
from engine.core.react import react, resume, start_plan
from engine.core.state import Container, World, status_of
from engine.outbox import decode_job, encode_job
from events import model as e
from events.runs import ExitStatus
from events.saga import SPAWN, STEPS, StartPlan, saga_steps
from events.specs import ContainerConfig, HostConfig, ImageConfig, NetworkSpec, PortBinding
from projections.views.ps import human_status
from workers import jobs, saga
from workers.proc.spec import ExitReport
from workers.proc.supervisor import report_entry

A = "a" * 64
IMAGE_ID = "sha256:" + "1" * 64
BRIDGE = NetworkSpec(name="bridge", subnet="172.17.0.0/16", gateway="172.17.0.1",
                     bridge="docker0")
MODES = ("bridge", "none", "host", "backend")  # a user network starts like bridge


class Scenario:
    """A world driven through the decider, as the reducer drives it."""

    def __init__(self, mode: str = "bridge") -> None:
        self.world = World()
        self.records: list[e.EventRecord] = []
        self.count = 0
        self.apply(c.DefineNetwork(network=BRIDGE))
        self.apply(c.DefineNetwork(network=NetworkSpec(
            name="backend", subnet="172.18.0.0/16", gateway="172.18.0.1", bridge="br-back")))
        self.apply(c.RegisterImage(image_id=IMAGE_ID, repo_tags=("busybox",),
                                   config=ImageConfig(cmd=("sh",)), layers=("sha256:l1",)))
        host = HostConfig(network_mode=mode, memory=64 << 20,
                          port_bindings={"80/tcp": (PortBinding(host_port="8080"),)}
                          if mode in ("bridge", "backend") else {})
        self.apply(c.CreateContainer(config=ContainerConfig(image="busybox", env=("A=1",)),
                                     name="web", host_config=host), A)
        self.apply(c.StartContainer(ref="web"))

    def apply(self, cmd: c.Command, target: str = "") -> list[e.Event]:
        self.count += 1
        env = c.Envelope(command_id=f"cmd-{self.count}", container_id=target,
                         issued_at=self.count * 1_000, actor="test")
        outcome = apply_command(self.world, env, cmd)
        self.records.extend(outcome.records)
        return [r.event for r in outcome.records]

    @property
    def container(self) -> Container:
        return self.world.containers[A]


def through_outbox_and_rq(job: Any) -> dict[str, Any]:
    """Carry a job as the engine does: the outbox's msgpack, then an rq job's JSON."""
    carried = decode_job(encode_job(job))
    redis = fakeredis.FakeRedis()
    rq_job = RqJob.create(carried.func, kwargs=carried.kwargs, id=carried.job_id,
                          connection=redis, serializer=JSONSerializer)
    rq_job.save()
    fetched = RqJob.fetch(carried.job_id, connection=redis, serializer=JSONSerializer)
    assert fetched.func_name == "workers.jobs.start_container"
    return fetched.kwargs


@pytest.mark.parametrize("mode", MODES)
def test_the_start_plan_reaches_the_saga_typed_and_equal(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(mode)
    record = next(r for r in scenario.records if isinstance(r.event, e.StartInitiated))
    (job,) = react(scenario.world, record)
    received: list[Any] = []
    monkeypatch.setattr(jobs, "current", lambda: "ctx")
    monkeypatch.setattr(jobs.saga, "start", lambda ctx, plan: received.append((ctx, plan)))
    jobs.start_container(**through_outbox_and_rq(job))
    [(ctx, plan)] = received
    assert ctx == "ctx" and isinstance(plan, StartPlan)
    # Compared with the container as the engine holds it, not with the plan itself.
    ctr = scenario.container
    assert (plan.container_id, plan.generation, plan.name, plan.image_id) == (
        A, 1, "web", IMAGE_ID)
    assert plan.layers == ("sha256:l1",) and plan.steps == saga_steps(mode) == ctr.saga
    assert plan.config == ctr.config and plan.host_config == ctr.host_config
    assert plan.endpoint == ctr.endpoint
    if mode in ("none", "host"):
        assert plan.endpoint is None and plan.network is None
    else:
        assert plan.endpoint is not None
        assert plan.network == scenario.world.networks[plan.endpoint.network]


def test_a_resumed_start_plan_owes_only_the_later_steps() -> None:
    scenario = Scenario()
    scenario.apply(c.ReportMounted(generation=1, rootfs="/merged"), A)
    (job,) = resume(scenario.world)
    plan = CODEC.plan(through_outbox_and_rq(job)["plan"])
    assert plan == start_plan(scenario.world, scenario.container)
    assert plan.steps == ("sandbox", "endpoint", "spawn")


def test_the_exit_report_is_an_entry_the_reducer_decodes() -> None:
    report = ExitReport(redis_url="redis://x", stream="s", container_id=A, generation=4,
                        actor="supervisor@h")
    status = ExitStatus(exit_code=137, signal=9, oom_killed=True, pid=7, started_at_ns=10,
                        finished_at_ns=20)
    entry = report_entry(report, status)
    assert set(entry) == {"env", "cmd"}
    env = CODEC.envelope(entry["env"])
    assert (env.command_id, env.container_id, env.actor) == (f"exit-{A}-4-7", A, "supervisor@h")
    assert env.issued_at > status.finished_at_ns
    assert CODEC.command(entry["cmd"]) == c.ReportProcessExited(
        generation=4, exit_code=137, finished_at=20, oom_killed=True, pid=7)


# --- one home for the step order --------------------------------------------------------

REPORTS: dict[str, c.SagaReport] = {
    "mount": c.ReportMounted(generation=1, rootfs="/merged"),
    "sandbox": c.ReportSandbox(generation=1, sandbox_key="/run/netns/x"),
    "endpoint": c.ReportEndpoint(generation=1, endpoint_id="veth"),
    "spawn": c.ReportProcessStarted(generation=1, pid=42, started_at=5_000),
}


def test_every_step_has_one_report_and_one_worker_action() -> None:
    assert {r.completes for r in c.SAGA_REPORTS} == set(STEPS) == set(REPORTS)
    assert {type(REPORTS[step]).completes for step in STEPS} == set(STEPS)
    assert set(saga._STEPS) == set(STEPS)
    assert all(saga_steps(mode)[-1] == SPAWN for mode in MODES)


@pytest.mark.parametrize("mode", MODES)
def test_the_decider_awaits_the_steps_in_the_sagas_order(mode: str) -> None:
    scenario = Scenario(mode)
    steps = saga_steps(mode)
    for step in reversed(steps[1:]):  # any other order than the saga's is ignored
        assert isinstance(scenario.apply(REPORTS[step], A)[0], e.ReportIgnored)
    for step in steps:
        assert scenario.container.saga[0] == step
        assert not isinstance(scenario.apply(REPORTS[step], A)[0], e.ReportIgnored)
    assert status_of(scenario.container) == "running"


class FakeHost:
    """The worker's context, minus the host: records what the saga reports."""

    def __init__(self, ctr: Container) -> None:
        self.ctr = ctr
        self.reports: list[tuple[str, str]] = []

    def container(self, cid: str) -> Container:
        return self.ctr

    def report(self, cid: str, report: c.Command, command_id: str) -> None:
        self.reports.append((type(report).__name__, command_id))


@pytest.mark.parametrize("mode", MODES)
def test_the_worker_performs_every_step_in_order_and_reports_the_owed_ones(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(mode)
    scenario.apply(REPORTS["mount"], A)
    plan = start_plan(scenario.world, scenario.container)  # mount is no longer owed
    done: list[str] = []
    for step in STEPS:
        def perform(run: Any, step: str = step) -> tuple[c.Command, str]:
            done.append(step)
            return REPORTS[step], f"{step}-id"
        monkeypatch.setitem(saga._STEPS, step, perform)
    host = FakeHost(scenario.container)
    saga.start(host, plan)  # type: ignore[arg-type]
    assert done == list(saga_steps(mode))
    assert host.reports == [(type(REPORTS[s]).__name__, f"{s}-id") for s in saga_steps(mode)[1:]]


def test_a_failed_step_is_undone_and_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario()
    plan = start_plan(scenario.world, scenario.container)
    undone: list[str] = []

    def mount(run: Any) -> tuple[c.Command, str]:
        run.undo.push("mount", lambda: undone.append("mount"))
        return REPORTS["mount"], "mount-id"

    def sandbox(run: Any) -> tuple[c.Command, str]:
        raise OSError("no namespaces today")
    monkeypatch.setitem(saga._STEPS, "mount", mount)
    monkeypatch.setitem(saga._STEPS, "sandbox", sandbox)
    host = FakeHost(scenario.container)
    saga.start(host, plan)  # type: ignore[arg-type]
    assert undone == ["mount"]
    assert host.reports == [("ReportMounted", "mount-id"), ("ReportStepFailed", f"failed-{A}-1")]


# --- one home for Docker's status precedence ----------------------------------------------

WORDING = {  # the first words of Docker's human Status for each State.Status
    "running": "Up ", "paused": "Up ", "restarting": "Restarting (", "removing": "Removal",
    "dead": "Dead", "created": "Created", "exited": "Exited (",
}


def test_human_status_words_the_state_status_of_decides() -> None:
    flags = ("running", "paused", "restarting", "removal_in_progress", "dead")
    seen = set()
    for values in itertools.product((False, True), repeat=len(flags)):
        for started_at, finished_at in ((0, 0), (5, 0), (5, 9)):
            state: dict[str, Any] = dict(zip(flags, values, strict=True))
            ctr = Container(id=A, name="web", image="busybox", image_id=IMAGE_ID,
                            config=ContainerConfig(image="busybox"), host_config=HostConfig(),
                            created=1, started_at=started_at, finished_at=finished_at, **state)
            status, text = status_of(ctr), human_status(ctr, 100 * 1_000_000_000)
            seen.add(status)
            if status == "exited" and finished_at == 0:
                assert text == ""  # Docker's String(): no finish time, no text
            else:
                assert text.startswith(WORDING[status]), (ctr, status, text)
            assert text.endswith("(Paused)") == (status == "paused")
    assert seen == set(WORDING)
