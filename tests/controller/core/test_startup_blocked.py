"""Table tests of an attempt that cannot start: the scheduler's reason said on the job (condition
`Scheduled`, a Warning event once per distinct message), and the start-up deadline
(`failurePolicy.startupTimeoutSeconds`) that fails the attempt with reason `StartupTimeout`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controller.api.constants import Action, Condition, Phase, Reason
from controller.api.types import JobStatus, parse_failure_policy, parse_status, status_to_dict
from controller.core.plan import EmitEvent, WriteStatus
from controller.core.policy import conditions, startup
from controller.core.timefmt import format_time
from tests.support.core_inputs import NOW, context, job, pod, run

MSG = "0/2 nodes are available: 2 Insufficient huawei.com/Ascend910."
OTHER = "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector."
TIMEOUT = {"maxRestarts": 2, "startupTimeoutSeconds": 600}


def blocked(rank: int, message: str = MSG, reason: str = "Unschedulable", attempt: int = 0) -> dict[str, Any]:
    """A worker the scheduler could not place, with the condition kube-scheduler writes."""
    cond = {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}
    return pod(rank, attempt=attempt, phase="Pending", node="", conditions=[cond])


def pending(**extra: Any) -> dict[str, Any]:
    """The status of attempt 0, created 100 s ago, not all running."""
    created = format_time(NOW - timedelta(seconds=100))
    return {"phase": "Pending", "attempt": 0, "replicas": 2, "attemptCreatedAt": created, **extra}


def said(status: str, reason: str, message: str) -> dict[str, Any]:
    at = format_time(NOW - timedelta(seconds=50))
    return {
        "type": "Scheduled",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": at,
    }


def scheduled_condition(status: JobStatus) -> tuple[str, str, str] | None:
    found = [c for c in status.conditions if c["type"] == Condition.SCHEDULED]
    return (found[0]["status"], found[0]["reason"], found[0]["message"]) if found else None


# --- the scheduler's reason, said on the job --------------------------------------------------

NOT_SAID = None


@pytest.mark.parametrize(
    ("before", "pods", "after", "event"),
    [
        # The first word of the scheduler: condition and one event, quoting it.
        ([], [blocked(0), blocked(1)], ("False", "Unschedulable", f"attempt 0: {MSG}"), True),
        # Said already: no write, no second event.
        ([said("False", "Unschedulable", f"attempt 0: {MSG}")], [blocked(0), blocked(1)], NOT_SAID, False),
        # A new message is said again.
        (
            [said("False", "Unschedulable", f"attempt 0: {OTHER}")],
            [blocked(0), blocked(1)],
            ("False", "Unschedulable", f"attempt 0: {MSG}"),
            True,
        ),
        # The first worker by rank that waits for the scheduler speaks.
        (
            [],
            [pod(0, phase="Pending"), blocked(1, OTHER)],
            ("False", "Unschedulable", f"attempt 0: {OTHER}"),
            True,
        ),
        ([], [blocked(1, OTHER), blocked(0)], ("False", "Unschedulable", f"attempt 0: {MSG}"), True),
        # Gated pods (Kueue, scheduling gates) say so in their own reason.
        (
            [],
            [blocked(0, "Scheduling is blocked due to non-empty scheduling gates", "SchedulingGated")],
            (
                "False",
                "SchedulingGated",
                "attempt 0: Scheduling is blocked due to non-empty scheduling gates",
            ),
            True,
        ),
        # Every worker on a node: an earlier Scheduled=False is cleared, without an event.
        (
            [said("False", "Unschedulable", f"attempt 0: {MSG}")],
            [pod(0, phase="Pending"), pod(1, phase="Pending")],
            ("True", "AllWorkersScheduled", "attempt 0"),
            False,
        ),
        # Pods the scheduler has not looked at yet are neither blocked nor placed.
        (
            [said("False", "Unschedulable", f"attempt 0: {MSG}")],
            [pod(0, phase="Pending", node="")],
            NOT_SAID,
            False,
        ),
        # A job that never waited gets no condition at all.
        ([], [pod(0, phase="Pending"), pod(1, phase="Pending")], NOT_SAID, False),
    ],
)
def test_the_scheduler_reason_is_said_once_per_message(
    before: list[dict[str, Any]], pods: list[dict[str, Any]], after: tuple[str, str, str] | None, event: bool
) -> None:
    ctx, status = context(job(pending(conditions=before)), pods)
    t = startup.waiting(ctx, status)
    if after is None:
        assert t is None
        return
    assert t is not None and scheduled_condition(t.status) == after
    expected = (EmitEvent("Warning", after[1], after[2]),) if event else ()
    assert t.notices == expected


def test_a_running_job_is_not_waiting() -> None:
    ctx, status = context(job({**pending(), "phase": "Running"}), [blocked(0), blocked(1)])
    assert startup.waiting(ctx, status) is None


def test_a_gang_that_runs_clears_the_scheduler_condition() -> None:
    before = [said("False", "Unschedulable", f"attempt 0: {MSG}")]
    ctx, status = context(job(pending(conditions=before)), [pod(0), pod(1)])
    t = startup.running(ctx, status)
    assert t is not None and scheduled_condition(t.status) == ("True", "AllWorkersScheduled", "attempt 0")


def test_decide_writes_the_condition_and_event_once() -> None:
    pods = [blocked(0), blocked(1)]
    first = run(job(pending()), pods)
    assert first.status is not None and scheduled_condition(first.status) == (
        "False",
        "Unschedulable",
        f"attempt 0: {MSG}",
    )
    assert first.events == [EmitEvent("Warning", "Unschedulable", f"attempt 0: {MSG}")]
    again = run(job(status_to_dict(first.status)), pods, now=NOW + timedelta(seconds=5))
    assert again.of(WriteStatus) == [] and again.events == []


def test_the_conditions_policy_only_clears_what_was_set() -> None:
    assert conditions.scheduled((), 0, NOW) == ()
    blocked_ = conditions.unschedulable((), "Unschedulable", "m", NOW)
    assert conditions.unschedulable(blocked_, "Unschedulable", "m", NOW + timedelta(seconds=9)) == blocked_
    cleared = conditions.scheduled(blocked_, 1, NOW)
    assert [(c["status"], c["reason"]) for c in cleared] == [("True", "AllWorkersScheduled")]
    assert conditions.scheduled(cleared, 2, NOW) == cleared


# --- the start-up deadline --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "status", "pods", "remaining"),
    [
        ({}, pending(), [blocked(0), blocked(1)], None),  # no deadline unless asked for
        ({"startupTimeoutSeconds": 0}, pending(), [blocked(0), blocked(1)], None),
        (TIMEOUT, pending(), [blocked(0), blocked(1)], 500.0),
        (TIMEOUT, pending(attemptCreatedAt=format_time(NOW - timedelta(seconds=600))), [blocked(0)], 0.0),
        (TIMEOUT, pending(attemptCreatedAt=format_time(NOW - timedelta(seconds=700))), [blocked(0)], -100.0),
        (TIMEOUT, {**pending(), "phase": "Running"}, [pod(0), pod(1)], None),  # started: no deadline
        (TIMEOUT, pending(), [pod(0), pod(1)], None),  # every worker runs: this pass marks Running
        # A status written before attemptCreatedAt existed: the pods' creation time stands in.
        (
            TIMEOUT,
            pending(attemptCreatedAt=None),
            [blocked(0), pod(1, created=NOW - timedelta(seconds=30))],
            570.0,
        ),
        (TIMEOUT, pending(attemptCreatedAt=None), [blocked(0), blocked(1)], None),
    ],
)
def test_the_startup_deadline_is_one_answer(
    policy: dict[str, Any], status: dict[str, Any], pods: list[dict[str, Any]], remaining: float | None
) -> None:
    ctx, st = context(job({k: v for k, v in status.items() if v is not None}, failurePolicy=policy), pods)
    assert startup.startup_timeout_in(ctx, st) == remaining
    failure = startup.not_started(ctx, st)
    assert (failure is not None) is (remaining is not None and remaining <= 0)


LATE = pending(attemptCreatedAt=format_time(NOW - timedelta(seconds=600)))


@pytest.mark.parametrize(
    ("pods", "message", "pod_name", "node"),
    [
        (
            [blocked(0), blocked(1)],
            f"2 of 2 workers not running 600s after attempt 0 was created; llm-a0-0: Unschedulable: {MSG}",
            "llm-a0-0",
            None,
        ),
        (
            [pod(0), pod(1, phase="Pending", waiting="ImagePullBackOff")],
            "1 of 2 workers not running 600s after attempt 0 was created; llm-a0-1: container trainer "
            "waiting: ImagePullBackOff (ImagePullBackOff for the test)",
            "llm-a0-1",
            "node-0",
        ),
        (
            [pod(0), pod(1, phase="Pending", node="node-3")],
            "1 of 2 workers not running 600s after attempt 0 was created; llm-a0-1: Pending on node-3",
            "llm-a0-1",
            "node-3",
        ),
        (
            [pod(0, phase="Pending", node=""), pod(1, phase="Pending", node="")],
            "2 of 2 workers not running 600s after attempt 0 was created; llm-a0-0: Pending, not scheduled "
            "yet",
            "llm-a0-0",
            None,
        ),
    ],
)
def test_a_startup_timeout_says_why_the_gang_did_not_start(
    pods: list[dict[str, Any]], message: str, pod_name: str, node: str | None
) -> None:
    ctx, status = context(job(LATE, failurePolicy=TIMEOUT), pods)
    failure = startup.not_started(ctx, status)
    assert failure is not None and failure.reason is Reason.STARTUP_TIMEOUT
    assert (failure.message, failure.pod, failure.node, failure.at) == (message, pod_name, node, NOW)


def test_a_startup_timeout_is_a_counted_restart_that_quotes_the_scheduler() -> None:
    plan = run(job(LATE, failurePolicy=TIMEOUT), [blocked(0), blocked(1)])
    st = plan.status
    assert st is not None and st.phase is Phase.RESTARTING and st.attempt == 1
    assert (st.restarts, st.uncounted_restarts, st.budget_used) == (1, 0, 1)
    assert st.last_failure is not None and st.last_failure.reason == "StartupTimeout"
    assert st.last_failure.counted and st.last_failure.action == Action.RESTART_JOB
    assert MSG in st.last_failure.message
    [restarting] = [e for e in plan.events if e.reason == "Restarting"]
    assert restarting.type == "Warning" and MSG in restarting.message
    assert {d.name for d in plan.delete_pods} == {"llm-a0-0", "llm-a0-1"}


def test_a_gang_that_never_starts_fails_the_job_when_the_budget_is_used() -> None:
    plan = run(job({**LATE, "budgetUsed": 2, "restarts": 2}, failurePolicy=TIMEOUT), [blocked(0), blocked(1)])
    st = plan.status
    assert st is not None and st.phase is Phase.FAILED
    assert st.last_failure is not None and st.last_failure.reason == "StartupTimeout"
    [failed] = [c for c in st.conditions if c["type"] == "Failed"]
    assert failed["reason"] == "RestartBudgetExceeded" and MSG in failed["message"]


@pytest.mark.parametrize(
    "rule",
    [
        {"action": "FailJob", "onReasons": ["StartupTimeout"]},
        {"action": "FailJob", "onPodConditions": [{"type": "PodScheduled", "status": "False"}]},
    ],
)
def test_user_rules_decide_a_startup_timeout_first(rule: dict[str, Any]) -> None:
    plan = run(job(LATE, failurePolicy={**TIMEOUT, "rules": [rule]}), [blocked(0), blocked(1)])
    st = plan.status
    assert st is not None and st.phase is Phase.FAILED
    [failed] = [c for c in st.conditions if c["type"] == "Failed"]
    assert failed["reason"] == "StartupTimeout" and MSG in failed["message"]


def test_the_requeue_deadline_reads_the_startup_deadline() -> None:
    plan = run(job(pending(), failurePolicy=TIMEOUT), [blocked(0), blocked(1)])
    assert plan.requeue_after == 500.0
    assert run(job(pending()), [blocked(0), blocked(1)]).requeue_after is None


def test_each_attempt_records_when_it_was_created() -> None:
    ctx, status = context(job({"phase": "Pending"}))
    assert startup.create_attempt(ctx, status).status.attempt_created_at == format_time(NOW)
    later = NOW + timedelta(minutes=5)
    restarting = {
        "phase": "Restarting",
        "attempt": 1,
        "startTime": format_time(NOW),
        "nextAttemptAfter": format_time(NOW),
    }
    ctx, status = context(job(restarting), now=later)
    created = startup.continue_restart(ctx, status).status
    assert (created.start_time, created.attempt_created_at) == (format_time(NOW), format_time(later))


def test_the_policy_field_and_the_status_field_parse() -> None:
    assert parse_failure_policy({"startupTimeoutSeconds": 900}).startup_timeout == 900.0
    assert parse_failure_policy({}).startup_timeout is None
    assert parse_failure_policy({"startupTimeoutSeconds": 0}).startup_timeout is None
    status = parse_status({"attemptCreatedAt": "2026-11-23T12:00:00.000000Z"})
    assert status.attempt_created_at == "2026-11-23T12:00:00.000000Z"
    assert status_to_dict(status)["attemptCreatedAt"] == "2026-11-23T12:00:00.000000Z"
