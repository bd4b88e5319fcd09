"""spec.suspend (core/policy/suspend.py): no pods while suspended, status kept, a new attempt on
resume; never a restart, counted or not. And spec.ttlSecondsAfterFinished."""

from __future__ import annotations

from datetime import timedelta

from controller.api.constants import Phase
from controller.core.plan import CreatePods, DeleteJob, EmitEvent, WriteStatus
from controller.core.timefmt import format_time
from tests.support.core_inputs import NOW, RUNNING, job, pod, run


def condition(status: object, type_: str) -> dict[str, str]:
    return next(c for c in status.conditions if c["type"] == type_)  # type: ignore[attr-defined]


def test_suspending_a_running_gang_stops_it_and_moves_to_the_next_attempt() -> None:
    body = job({**RUNNING, "restarts": 1, "attempt": 0, "lastCompleteCheckpoint": {"step": 40}}, suspend=True)
    plan = run(body, [pod(0), pod(1)])
    st = plan.status
    assert st is not None and (st.phase, st.attempt, st.restarts, st.uncounted_restarts) == (
        Phase.SUSPENDED,
        1,
        1,
        0,
    )
    assert st.replicas is None and st.checkpoint_step_at_restart == 40
    assert {d.name for d in plan.delete_pods} == {"llm-a0-0", "llm-a0-1"}
    assert isinstance(plan.steps[0], WriteStatus), "recorded before the teardown, as a restart is"
    assert condition(st, "Suspended")["status"] == "True" and condition(st, "Running")["status"] == "False"
    assert [e.reason for e in plan.of(EmitEvent)] == ["Suspended"]
    assert plan.of(CreatePods) == []


def test_while_suspended_leftovers_go_and_nothing_is_created() -> None:
    held = {"phase": "Suspended", "attempt": 1}
    plan = run(job(held, suspend=True), [pod(0, phase="Running"), pod(1, phase="Failed", exit_code=75)])
    assert {d.name for d in plan.delete_pods} == {"llm-a0-0", "llm-a0-1"} and plan.of(CreatePods) == []
    assert plan.status is None or plan.status.phase is Phase.SUSPENDED


def test_created_suspended_waits_without_an_attempt() -> None:
    plan = run(job(None, suspend=True), [])
    assert plan.status is not None and (plan.status.phase, plan.status.attempt) == (Phase.SUSPENDED, 0)
    assert plan.of(CreatePods) == [] and plan.delete_pods == []


def test_resume_creates_the_next_attempt_once_the_stopped_gang_is_gone() -> None:
    held = {"phase": "Suspended", "attempt": 1, "lastCompleteCheckpoint": {"step": 40}}
    waiting = run(job(held), [pod(0, phase="Failed", exit_code=75)])
    assert waiting.status is not None and waiting.status.phase is Phase.PENDING
    assert waiting.of(CreatePods) == [], "the stopped attempt's pod is still there"
    plan = run(job(held), [])
    [create] = plan.of(CreatePods)
    assert (create.attempt, create.indices) == (1, (0, 1))
    st = plan.status
    assert st is not None and st.phase is Phase.PENDING and st.replicas == 2
    assert condition(st, "Suspended")["status"] == "False"
    assert [e.reason for e in plan.of(EmitEvent)][:1] == ["Resumed"]


def test_a_finished_job_ignores_suspend() -> None:
    done = {"phase": "Succeeded", "attempt": 2, "replicas": 2}
    plan = run(job(done, suspend=True), [])
    assert plan.status is None or plan.status.phase is Phase.SUCCEEDED


def test_a_finished_job_is_deleted_after_its_ttl() -> None:
    done = {"phase": "Succeeded", "attempt": 0, "completionTime": format_time(NOW - timedelta(seconds=30))}
    early = run(job(done, ttlSecondsAfterFinished=100), [])
    assert early.of(DeleteJob) == [] and early.requeue_after == 70, "looked at again when it is due"
    due = run(job(done, ttlSecondsAfterFinished=30), [])
    assert due.of(DeleteJob) == [DeleteJob("u-1")]
    assert run(job(done), []).of(DeleteJob) == [], "no ttl: kept"
    running = run(job({**RUNNING}, ttlSecondsAfterFinished=0), [pod(0), pod(1)])
    assert running.of(DeleteJob) == [], "only a finished job"
