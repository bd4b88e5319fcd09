"""Table tests of the startup policy: waiting, creating an attempt, and reaching Running."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controller.api.constants import Phase
from controller.api.types import CheckpointRef
from controller.core.observations import Observations
from controller.core.plan import CreatePods, EmitEvent, EnsureReportAccess, EnsureService, RecordRecovery
from controller.core.policy import startup
from controller.core.timefmt import format_time
from tests.support.core_inputs import NOW, context, job, pod

RESTARTING = {
    "phase": "Restarting",
    "attempt": 1,
    "nextAttemptAfter": format_time(NOW + timedelta(seconds=10)),
    "checkpointStepAtRestart": 4,
}


@pytest.mark.parametrize(
    ("pods", "now", "creates", "requeue"),
    [
        ([pod(0, attempt=0, deleting=True)], NOW + timedelta(seconds=60), False, None),  # old gang not gone
        ([], NOW, False, 10.0),  # in backoff
        ([], NOW + timedelta(seconds=10), True, None),
    ],
)
def test_continue_restart(pods: list[dict[str, Any]], now: Any, creates: bool, requeue: float | None) -> None:
    ctx, status = context(job(RESTARTING), pods, now=now)
    t = startup.continue_restart(ctx, status)
    assert bool(t.changes) is creates and t.requeue_after == requeue
    assert t.status.phase is (Phase.PENDING if creates else Phase.RESTARTING)


def test_create_attempt_makes_the_service_and_the_missing_ranks() -> None:
    ctx, status = context(job({"phase": "Pending", "attempt": 2}), [pod(1, attempt=2)])
    t = startup.create_attempt(ctx, status)
    service, access, create = t.changes
    assert isinstance(service, EnsureService) and service.body["metadata"]["name"] == "llm"
    assert isinstance(access, EnsureReportAccess)
    role = next(o for o in access.objects if o["kind"] == "Role")
    # The workers may patch this attempt's pods, all of them (a rank created earlier reports too).
    assert role["rules"][0]["resourceNames"] == ["llm-a2-0", "llm-a2-1"]
    assert isinstance(create, CreatePods) and [b["metadata"]["name"] for b in create.bodies()] == ["llm-a2-0"]
    assert t.notices == (EmitEvent("Normal", "AttemptCreated", "attempt 2: 2 workers"),)
    assert (t.status.replicas, t.status.start_time) == (2, format_time(NOW))


def test_all_ranks_there_creates_only_the_service() -> None:
    ctx, status = context(job({"phase": "Pending"}), [pod(0), pod(1)])
    assert [type(c) for c in startup.create_attempt(ctx, status).changes] == [EnsureService]


@pytest.mark.parametrize(
    ("observed", "expected"),
    [(None, 4), (CheckpointRef(step=9), 9)],
)
def test_the_attempt_records_the_step_it_resumes_from(observed: CheckpointRef | None, expected: int) -> None:
    ctx, status = context(
        job({**RESTARTING, "nextAttemptAfter": format_time(NOW)}), [], Observations(checkpoint=observed)
    )
    assert startup.continue_restart(ctx, status).status.resumed_from_step == expected


def test_faulty_nodes_are_avoided_unless_turned_off() -> None:
    status = {"phase": "Pending", "faultyNodes": ["node-7"]}
    for policy, avoided in (({}, True), ({"avoidFaultyNodes": False}, False)):
        ctx, st = context(job(status, failurePolicy=policy))
        [create] = [c for c in startup.create_attempt(ctx, st).changes if isinstance(c, CreatePods)]
        assert ("affinity" in create.body(create.indices[0])["spec"]) is avoided


@pytest.mark.parametrize(
    ("phases", "running"),
    [
        (["Running", "Running"], True),
        (["Running", "Succeeded"], True),
        (["Running", "Pending"], False),
        ([], False),
    ],
)
def test_running_once_every_worker_runs(phases: list[str], running: bool) -> None:
    seen_at = format_time(NOW - timedelta(seconds=7))
    pods = [pod(r, phase=ph) for r, ph in enumerate(phases)]
    ctx, status = context(job({"phase": "Pending", "replicas": 2, "failureSeenAt": seen_at}), pods)
    t = startup.running(ctx, status)
    assert (t is not None) is running
    if t is not None:
        assert t.status.phase is Phase.RUNNING and t.status.failure_seen_at is None
        assert RecordRecovery(7.0) in t.notices


def test_already_running_is_no_transition() -> None:
    ctx, status = context(job({"phase": "Running", "replicas": 2}), [pod(0), pod(1)])
    assert startup.running(ctx, status) is None
