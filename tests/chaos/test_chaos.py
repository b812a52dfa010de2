"""The CI chaos profile: every kind of fault once, at fixed points, a fixed seed.

The profile runs once per session; each test judges part of its report and fails with
the whole report (figures, fault points, each violation with its journal excerpt). How
long it takes is printed, not asserted: CI's budget is kept by the profile's shape
(about 90 s here), and speed is the benchmarks' business.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.chaos.report import Report
from tests.chaos.run import SHORT, run_profile
from tests.e2e.conftest import check_capabilities

pytestmark = pytest.mark.privileged

CI_SEED = 20240611
RESTORE = "restore-rules"  # Docker's restore rules after a host reboot (§5.4)


@pytest.fixture(scope="module")
def report() -> Iterator[Report]:
    check_capabilities()  # fails loudly under MOOR_REQUIRE_PRIVILEGED=1
    started = time.monotonic()
    found = run_profile(SHORT, CI_SEED)
    print(found.render())
    print(f"the CI chaos profile took {time.monotonic() - started:.0f}s")
    yield found


def test_every_fault_was_injected_and_confirmed(report: Report) -> None:
    assert len(report.points) == len(SHORT.schedule or ()), report.render()
    assert all(point.confirmed for point in report.points), report.render()


def test_nothing_lost_doubled_leaked_or_stuck(report: Report) -> None:
    broken = [v for v in report.violations if v.invariant != RESTORE]
    assert not broken, report.render()


def test_docker_restore_rules_after_a_reboot(report: Report) -> None:
    broken = [v for v in report.violations if v.invariant == RESTORE]
    assert not broken, report.render()
