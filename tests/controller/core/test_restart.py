"""Table tests of the restart policy: backoff, refund, budget, and the restart/fail transition."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controller.api.constants import Action, Phase, Reason
from controller.api.types import CheckpointRef
from controller.core.observations import Observations
from controller.core.plan import DeletePod, EmitEvent, RecordRestart
from controller.core.policy import restart
from controller.core.policy.failures import Failure, Verdict
from controller.core.timefmt import format_time
from tests.support.core_inputs import NOW, RUNNING, context, job, pod


@pytest.mark.parametrize(
    ("n", "initial", "expected"),
    [(0, 10, 0), (1, 10, 10), (2, 10, 20), (3, 10, 40), (9, 10, 40), (3, 0, 0), (-1, 10, 0)],
)
def test_backoff_doubles_up_to_the_cap(n: int, initial: float, expected: float) -> None:
    assert restart.backoff_seconds(n, initial=initial, maximum=40) == expected


@pytest.mark.parametrize(
    ("status", "step", "refunded"),
    [
        ({"phase": "Running", "consecutiveFailures": 1, "checkpointStepAtRestart": 10}, 12, True),
        ({"phase": "Pending", "consecutiveFailures": 1, "checkpointStepAtRestart": 10}, 12, True),
        ({"phase": "Running", "consecutiveFailures": 1}, 3, True),  # no checkpoint at the restart
        ({"phase": "Running", "consecutiveFailures": 1, "checkpointStepAtRestart": 10}, 10, False),
        ({"phase": "Running", "consecutiveFailures": 0, "checkpointStepAtRestart": 10}, 12, False),
        # The dying attempt's own last commit does not count.
        ({"phase": "Restarting", "consecutiveFailures": 1, "checkpointStepAtRestart": 10}, 12, False),
        ({"phase": "Running", "consecutiveFailures": 1, "checkpointStepAtRestart": 10}, None, False),
    ],
)
def test_refund(status: dict[str, Any], step: int | None, refunded: bool) -> None:
    _, before = context(job({**status, "budgetUsed": 2}))
    obs = Observations(checkpoint=CheckpointRef(step=step) if step is not None else None)
    after = restart.refund(before, obs)
    if refunded:
        assert (after.budget_used, after.consecutive_failures, after.checkpoint_step_at_restart) == (
            1,
            0,
            None,
        )
    else:
        assert after == before


FAILED = Failure(Reason.ERROR, "exit 1", NOW, "llm-a0-1", "node-1", 1)
LOST = Failure(Reason.NODE_LOST, "gone", NOW, "llm-a0-1", "node-1")


@pytest.mark.parametrize(
    ("verdict", "used", "action", "exhausted"),
    [
        (Verdict(FAILED, Action.RESTART_JOB), 1, Action.RESTART_JOB, None),
        (Verdict(FAILED, Action.RESTART_JOB), 2, Action.FAIL_JOB, 2),
        (Verdict(LOST, Action.RESTART_JOB_IGNORE_BUDGET), 2, Action.RESTART_JOB_IGNORE_BUDGET, None),
        (Verdict(FAILED, Action.FAIL_JOB), 0, Action.FAIL_JOB, None),
    ],
)
def test_within_budget(verdict: Verdict, used: int, action: Action, exhausted: int | None) -> None:
    _, status = context(job({**RUNNING, "budgetUsed": used}))
    ctx, _ = context(job(RUNNING))
    judged = restart.within_budget(verdict, status, ctx.policy)
    assert (judged.action, judged.exhausted_budget) == (action, exhausted)
    assert judged.counted == (action is Action.RESTART_JOB)


def test_restart_is_recorded_before_the_teardown_and_counts() -> None:
    obs = Observations(checkpoint=CheckpointRef(step=8), last_step=11)
    ctx, status = context(job({**RUNNING, "consecutiveFailures": 1}), [pod(0), pod(1)], obs)
    t = restart.fail_attempt(ctx, status, Verdict(FAILED, Action.RESTART_JOB))
    st = t.status
    assert t.record_first and t.requeue_after == 20
    assert (st.phase, st.attempt, st.replicas, st.restarts, st.budget_used) == (
        Phase.RESTARTING,
        1,
        None,
        1,
        1,
    )
    assert st.next_attempt_after == format_time(NOW + timedelta(seconds=20))
    assert st.checkpoint_step_at_restart == 8 and st.failure_seen_at == format_time(NOW)
    assert st.last_failure is not None and st.last_failure.counted and st.last_failure.exit_code == 1
    assert [s.name for s in t.changes if isinstance(s, DeletePod)] == ["llm-a0-0", "llm-a0-1"]
    assert RecordRestart("Error", True, 3) in t.notices
    [event] = [n for n in t.notices if isinstance(n, EmitEvent)]
    assert event.message == "Error on llm-a0-1: exit 1; restart counted, attempt 1 in 20s"


def test_node_faults_restart_uncounted_and_avoid_the_node_once() -> None:
    ctx, status = context(job({**RUNNING, "faultyNodes": ["node-1"]}), [pod(0), pod(1)])
    st = restart.fail_attempt(ctx, status, Verdict(LOST, Action.RESTART_JOB_IGNORE_BUDGET)).status
    assert (st.restarts, st.uncounted_restarts, st.budget_used) == (0, 1, 0)
    assert st.faulty_nodes == ("node-1",)


def test_faulty_nodes_keep_the_newest_sixteen() -> None:
    known = [f"n{i}" for i in range(restart.MAX_FAULTY_NODES)]
    ctx, status = context(job({**RUNNING, "faultyNodes": known}), [pod(0), pod(1)])
    st = restart.fail_attempt(ctx, status, Verdict(LOST, Action.RESTART_JOB_IGNORE_BUDGET)).status
    assert st.faulty_nodes == (*known[1:], "node-1")


def test_an_exhausted_budget_fails_the_job_with_its_own_reason() -> None:
    ctx, status = context(job({**RUNNING, "budgetUsed": 2}), [pod(0), pod(1)])
    t = restart.fail_attempt(ctx, status, Verdict(FAILED, Action.RESTART_JOB))
    st = t.status
    assert st.phase is Phase.FAILED and t.record_first and t.requeue_after is None
    assert st.last_failure is not None
    assert (st.last_failure.reason, st.last_failure.action, st.last_failure.counted) == (
        "Error",
        "FailJob",
        False,
    )
    assert st.last_failure.message == "exit 1; restart budget of 2 exhausted"
    failed = next(c for c in st.conditions if c["type"] == "Failed")
    assert failed["reason"] == Reason.BUDGET_EXCEEDED and st.completion_time == format_time(NOW)
    assert not any(isinstance(n, RecordRestart) for n in t.notices)


@pytest.mark.parametrize(
    ("written_by", "step", "refunded"),
    [
        (1, 12, True),  # the current attempt's own commit
        (1, 8, True),  # its own, even below the step at the restart (it resumed from an older one)
        (0, 12, False),  # the dying attempt's late commit: not progress of the new one
        (None, 12, True),  # meta.json without attempts (written outside respawn): newer step counts
        (None, 10, False),
    ],
)
def test_only_the_current_attempts_commit_refunds(written_by: int | None, step: int, refunded: bool) -> None:
    status = {"phase": "Running", "attempt": 1, "consecutiveFailures": 1, "checkpointStepAtRestart": 10}
    _, before = context(job({**status, "budgetUsed": 1}))
    after = restart.refund(before, Observations(checkpoint=CheckpointRef(step=step, attempt=written_by)))
    assert (after.budget_used == 0) is refunded and (after.consecutive_failures == 0) is refunded


STOPPED = Failure(Reason.STOPPED, "exit 75", NOW, "llm-a0-1", "node-1", 75)
ZERO = {"maxRestarts": 2, "backoff": {"initialSeconds": 0, "maxSeconds": 0}}


@pytest.mark.parametrize(
    ("age", "rapid_before", "rapid_after", "delay"),
    [
        # initialSeconds 0: never sooner than the floor, even for an uncounted reason.
        (5, 0, 1, restart.BACKOFF_FLOOR),
        (5, restart.RAPID_FREE - 1, restart.RAPID_FREE, restart.BACKOFF_FLOOR),
        # Past RAPID_FREE rapid restarts in a row, the controller's own backoff doubles.
        (5, restart.RAPID_FREE, restart.RAPID_FREE + 1, restart.RAPID_INITIAL),
        (5, restart.RAPID_FREE + 1, restart.RAPID_FREE + 2, 2 * restart.RAPID_INITIAL),
        (5, restart.RAPID_FREE + 20, restart.RAPID_FREE + 21, restart.RAPID_MAX),
        # An attempt that lived through the window ends the run.
        (restart.RAPID_WINDOW, restart.RAPID_FREE + 20, 0, restart.BACKOFF_FLOOR),
        (None, restart.RAPID_FREE, restart.RAPID_FREE + 1, restart.RAPID_INITIAL),  # age unknown
    ],
)
def test_uncounted_restarts_are_rate_limited_whatever_the_jobs_backoff(
    age: float | None, rapid_before: int, rapid_after: int, delay: float
) -> None:
    status: dict[str, Any] = {**RUNNING, "rapidRestarts": rapid_before, "consecutiveFailures": 0}
    if age is not None:
        status["attemptCreatedAt"] = format_time(NOW - timedelta(seconds=age))
    ctx, before = context(job(status, failurePolicy=ZERO), [pod(0), pod(1)])
    t = restart.fail_attempt(ctx, before, Verdict(STOPPED, Action.RESTART_JOB_IGNORE_BUDGET))
    assert t.status.rapid_restarts == rapid_after and t.requeue_after == delay
    assert t.status.next_attempt_after == format_time(NOW + timedelta(seconds=delay))


@pytest.mark.parametrize(
    ("consecutive", "rapid", "expected"),
    [(1, 0, 10), (3, 0, 40), (1, restart.RAPID_FREE + 3, 4 * restart.RAPID_INITIAL), (0, 0, 1)],
)
def test_the_longest_of_the_jobs_backoff_the_floor_and_the_storm_backoff_wins(
    consecutive: int, rapid: int, expected: float
) -> None:
    ctx, _ = context(job(RUNNING))
    assert restart.restart_delay(consecutive, rapid, ctx.policy) == expected


def test_a_refund_does_not_end_a_run_of_rapid_restarts() -> None:
    status = {**RUNNING, "attempt": 1, "consecutiveFailures": 1, "rapidRestarts": 7, "budgetUsed": 1}
    _, before = context(job(status))
    after = restart.refund(before, Observations(checkpoint=CheckpointRef(step=3, attempt=1)))
    assert after.consecutive_failures == 0 and after.rapid_restarts == 7
