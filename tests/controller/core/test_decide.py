"""Table tests over the pure decision function: every rule and phase transition."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest

from controller.api.constants import Action, Phase, Reason
from controller.api.types import CheckpointRef, InvalidSpec, parse_job, status_to_dict
from controller.core.decide import decide_error
from controller.core.observations import NodeState, Observations
from controller.core.plan import DeletePod, EmitEvent, WriteStatus
from controller.core.timefmt import format_time
from respawn_protocol.contract import ExitCode
from tests.support.core_inputs import NOW, RUNNING, device_report, fault_entry, job, pod, run


def test_new_job_creates_service_and_every_rank() -> None:
    plan = run(job(), [])
    assert [p["metadata"]["name"] for p in plan.create_pods] == ["llm-a0-0", "llm-a0-1"]
    assert plan.ensure_service is not None and plan.ensure_service["spec"]["clusterIP"] == "None"
    assert plan.status is not None and plan.status.replicas == 2 and plan.status.phase is Phase.PENDING
    env = {e["name"]: e["value"] for e in plan.create_pods[1]["spec"]["containers"][0]["env"]}
    assert env["RESPAWN_RANK"] == "1" and env["RESPAWN_WORLD_SIZE"] == "2"
    assert env["MS_SCHED_HOST"] == "llm-a0-0.llm.team.svc"
    # Auto-resume names the job's directory; load_checkpoint / resume_training stay the user's.
    assert env["RESPAWN_JOB_CHECKPOINT_DIR"] == "/mnt/shared/team/llm/checkpoint"
    assert "RESPAWN_LOAD_CHECKPOINT" not in env and "RESPAWN_RESUME_TRAINING" not in env
    assert env["SHARED_PATHS"] == "/mnt/shared"
    assert plan.create_pods[0]["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_all_running_sets_phase_running() -> None:
    plan = run(job({"phase": "Pending", "attempt": 0, "replicas": 2}), [pod(0), pod(1)])
    assert plan.status is not None and plan.status.phase is Phase.RUNNING
    assert not plan.create_pods and not plan.delete_pods


def test_all_succeeded_sets_phase_succeeded() -> None:
    plan = run(job(RUNNING), [pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0)])
    assert plan.status is not None and plan.status.phase is Phase.SUCCEEDED


@pytest.mark.parametrize(
    ("failed", "reason", "counted"),
    [
        (pod(1, phase="Failed", exit_code=137), Reason.ERROR, True),
        (pod(1, phase="Failed", exit_code=137, reason="OOMKilled"), Reason.OOM_KILLED, True),
        (pod(1, phase="Failed", exit_code=ExitCode.STOPPED), Reason.STOPPED, False),
        (
            pod(
                1,
                phase="Failed",
                exit_code=143,
                conditions=[
                    {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
                ],
            ),
            Reason.EVICTED,
            False,
        ),
        (
            pod(
                1,
                conditions=[
                    {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}
                ],
            ),
            Reason.PREEMPTED,
            False,
        ),
        (pod(1, deleting=True), Reason.POD_DELETED, True),
    ],
)
def test_failures_restart_the_whole_gang(failed: dict[str, Any], reason: Reason, counted: bool) -> None:
    plan = run(job(RUNNING), [pod(0), failed])
    st = plan.status
    assert st is not None and st.phase is Phase.RESTARTING and st.attempt == 1
    assert st.last_failure is not None and st.last_failure.reason == reason.value
    assert (st.restarts, st.uncounted_restarts) == ((1, 0) if counted else (0, 1))
    # Recorded before the teardown: a controller that dies in between resumes the same restart.
    assert isinstance(plan.steps[0], WriteStatus)
    assert plan.steps.index(plan.of(WriteStatus)[0]) < min(plan.steps.index(d) for d in plan.of(DeletePod))
    assert {d.name for d in plan.delete_pods} >= {"llm-a0-0"}
    assert plan.requeue_after == 10


def test_permanent_exit_code_fails_at_once() -> None:
    plan = run(job(RUNNING), [pod(0), pod(1, phase="Failed", exit_code=ExitCode.CONFIG_ERROR)])
    st = plan.status
    assert st is not None and st.phase is Phase.FAILED and st.restarts == 0
    assert st.last_failure is not None and st.last_failure.action == Action.FAIL_JOB.value
    assert {d.name for d in plan.delete_pods} == {"llm-a0-0", "llm-a0-1"}


def test_budget_exhausted_fails_the_job() -> None:
    status = {**RUNNING, "attempt": 2, "restarts": 2, "budgetUsed": 2, "consecutiveFailures": 2}
    plan = run(job(status), [pod(0, attempt=2), pod(1, attempt=2, phase="Failed", exit_code=1)])
    st = plan.status
    assert st is not None and st.phase is Phase.FAILED
    assert any(c["type"] == "Failed" and c["reason"] == Reason.BUDGET_EXCEEDED for c in st.conditions)


def test_infrastructure_faults_ignore_an_exhausted_budget() -> None:
    status = {**RUNNING, "restarts": 2, "budgetUsed": 2}
    evicted = pod(
        1, conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}]
    )
    st = run(job(status), [pod(0), evicted]).status
    assert st is not None and st.phase is Phase.RESTARTING and st.budget_used == 2


def test_progress_after_a_restart_refunds_budget() -> None:
    status = {
        **RUNNING,
        "attempt": 1,
        "restarts": 1,
        "budgetUsed": 1,
        "consecutiveFailures": 1,
        "checkpointStepAtRestart": 10,
    }
    same = run(
        job(status), [pod(0, attempt=1), pod(1, attempt=1)], Observations(checkpoint=CheckpointRef(step=10))
    )
    assert same.status is not None and same.status.budget_used == 1
    newer = run(
        job(status), [pod(0, attempt=1), pod(1, attempt=1)], Observations(checkpoint=CheckpointRef(step=12))
    )
    st = newer.status
    assert st is not None and st.budget_used == 0 and st.restarts == 1 and st.consecutive_failures == 0
    assert st.last_complete_checkpoint == CheckpointRef(step=12)


def test_restart_waits_for_old_pods_then_backoff_then_creates_next_attempt() -> None:
    restarting = {
        "phase": "Restarting",
        "attempt": 1,
        "restarts": 1,
        "consecutiveFailures": 1,
        "nextAttemptAfter": format_time(NOW + timedelta(seconds=10)),
        "checkpointStepAtRestart": 4,
    }
    old_terminating = pod(0, attempt=0, deleting=True)
    waiting = run(job(restarting), [old_terminating])
    assert not waiting.create_pods and not waiting.delete_pods
    backing_off = run(job(restarting), [])
    assert not backing_off.create_pods and backing_off.requeue_after == pytest.approx(10)
    ready = run(job(restarting), [], now=NOW + timedelta(seconds=10))
    assert [p["metadata"]["name"] for p in ready.create_pods] == ["llm-a1-0", "llm-a1-1"]
    st = ready.status
    assert st is not None and st.phase is Phase.PENDING and st.replicas == 2 and st.resumed_from_step == 4


def test_stale_attempt_pods_are_deleted() -> None:
    plan = run(job(RUNNING), [pod(0), pod(1), pod(0, attempt=5)])
    assert [d.name for d in plan.delete_pods] == ["llm-a5-0"]


def test_node_lost_after_timeout_restarts_uncounted_and_avoids_the_node() -> None:
    obs = Observations(nodes={"node-1": NodeState(False, NOW - timedelta(seconds=31))})
    plan = run(job(RUNNING), [pod(0), pod(1, node="node-1")], obs)
    st = plan.status
    assert st is not None and st.phase is Phase.RESTARTING and st.uncounted_restarts == 1
    assert st.faulty_nodes == ("node-1",)
    assert any(d.force for d in plan.delete_pods if d.name == "llm-a0-1")
    early = Observations(nodes={"node-1": NodeState(False, NOW - timedelta(seconds=5))})
    st = run(job(RUNNING), [pod(0), pod(1, node="node-1")], early).status
    assert st is not None and st.phase is Phase.RUNNING and not st.faulty_nodes


def test_device_fault_moves_next_attempt_off_the_node() -> None:
    obs = Observations(
        device_reports={"node-1": device_report("node-1", fault_entry("Ascend910-3", "SeparateNPU"))}
    )
    st = run(job(RUNNING), [pod(0), pod(1, node="node-1")], obs).status
    assert st is not None and st.faulty_nodes == ("node-1",) and st.uncounted_restarts == 1
    restarting = dataclasses.replace(st, next_attempt_after=format_time(NOW))
    plan = run(job(status_to_dict(restarting)), [])
    terms = plan.create_pods[0]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["node-1"]}
    ]


def test_avoidance_off_keeps_nodes_allowed() -> None:
    obs = Observations(device_reports={"node-1": device_report("node-1", fault_entry("", "SeparateNPU"))})
    body = job(RUNNING, failurePolicy={"avoidFaultyNodes": False})
    st = run(body, [pod(0), pod(1, node="node-1")], obs).status
    assert st is not None and st.faulty_nodes == ()


def test_missing_rank_of_a_created_attempt_is_a_failure() -> None:
    st = run(job(RUNNING), [pod(0)]).status
    assert st is not None and st.last_failure is not None and st.last_failure.reason == Reason.POD_DELETED


def test_root_cause_is_the_earliest_failure() -> None:
    first = pod(1, phase="Failed", exit_code=137, finished=NOW - timedelta(seconds=5))
    second = pod(0, phase="Failed", exit_code=1, finished=NOW)
    st = run(job(RUNNING), [second, first]).status
    assert st is not None and st.last_failure is not None
    assert (st.last_failure.pod, st.last_failure.exit_code) == ("llm-a0-1", 137)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}, Phase.FAILED),
        (
            {"action": "RestartJobIgnoreBudget", "onExitCodes": {"operator": "In", "values": [42]}},
            Phase.RESTARTING,
        ),
        ({"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [42]}}, Phase.RESTARTING),
        ({"action": "FailJob", "onReasons": ["Error"]}, Phase.FAILED),
        ({"action": "FailJob", "onPodConditions": [{"type": "Custom", "status": "True"}]}, Phase.FAILED),
    ],
)
def test_user_rules_come_first(rule: dict[str, Any], expected: Phase) -> None:
    failed = pod(1, phase="Failed", exit_code=42, conditions=[{"type": "Custom", "status": "True"}])
    st = run(job(RUNNING, failurePolicy={"rules": [rule]}), [pod(0), failed]).status
    assert st is not None and st.phase is expected


def test_progress_timeout_restarts_a_hung_job() -> None:
    status = {**RUNNING, "runningSince": format_time(NOW - timedelta(minutes=10))}
    body = job(status, failurePolicy={"progressTimeoutSeconds": 300})
    untracked = run(body, [pod(0), pod(1)], Observations(last_progress=NOW - timedelta(seconds=301))).status
    assert untracked is not None and untracked.phase is Phase.RUNNING, "no observer, no hang verdict"
    hung = run(
        body,
        [pod(0), pod(1)],
        Observations(progress_tracked=True, last_progress=NOW - timedelta(seconds=301)),
    ).status
    assert hung is not None and hung.last_failure is not None
    assert hung.last_failure.reason == Reason.PROGRESS_TIMEOUT
    alive = run(
        body, [pod(0), pod(1)], Observations(progress_tracked=True, last_progress=NOW - timedelta(seconds=30))
    ).status
    assert alive is not None and alive.phase is Phase.RUNNING


def test_a_hang_restart_gives_the_next_attempt_its_own_clock() -> None:
    """Issue 12: the new attempt was declared hung at once, from the old attempt's last progress."""
    policy = {"progressTimeoutSeconds": 300, "progressGraceSeconds": 120}
    hung_at = Observations(progress_tracked=True, last_progress=NOW - timedelta(seconds=301))
    running = {**RUNNING, "runningSince": format_time(NOW - timedelta(minutes=10))}
    st = run(job(running, failurePolicy=policy), [pod(0), pod(1)], hung_at).status
    assert st is not None and st.phase is Phase.RESTARTING and st.running_since is None
    later = NOW + timedelta(seconds=30)
    created = run(job(status_to_dict(st), failurePolicy=policy), [], hung_at, now=later).status
    assert created is not None and created.attempt == 1
    up = run(
        job(status_to_dict(created), failurePolicy=policy),
        [pod(0, attempt=1), pod(1, attempt=1)],
        hung_at,
        now=later,
    )
    assert up.status is not None and up.status.phase is Phase.RUNNING
    assert up.status.running_since == format_time(later)
    # The old attempt's progress is 331 s old, but the new attempt has timeout + grace from its start.
    still = run(
        job(status_to_dict(up.status), failurePolicy=policy),
        [pod(0, attempt=1), pod(1, attempt=1)],
        hung_at,
        now=later,
    )
    assert still.status is None or still.status.phase is Phase.RUNNING
    assert still.requeue_after == 420.0


def test_failed_job_cleans_up_and_stays_failed() -> None:
    plan = run(job({"phase": "Failed", "attempt": 0, "replicas": 2}), [pod(0)])
    assert [d.name for d in plan.delete_pods] == ["llm-a0-0"] and not plan.create_pods


def test_edited_replicas_apply_to_the_next_attempt() -> None:
    restarting = {"phase": "Restarting", "attempt": 1, "nextAttemptAfter": format_time(NOW)}
    plan = run(job(restarting, replicas=1), [])
    assert [p["metadata"]["name"] for p in plan.create_pods] == ["llm-a1-0"]
    env = {e["name"]: e["value"] for e in plan.create_pods[0]["spec"]["containers"][0]["env"]}
    assert env["RESPAWN_WORLD_SIZE"] == "1"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"trainerContainer": "missing"}, "spec.trainerContainer 'missing' is not a container"),
        ({"outputDir": "a/../../b"}, "must stay inside the shared volume"),
        ({"outputDir": "/abs"}, r"spec.outputDir '/abs' must be relative"),
        ({"outputDir": "a/./b"}, r"spec.outputDir 'a/./b' must be normalized"),
        ({"outputDir": "a//b"}, "spec.outputDir 'a//b' must be normalized"),
        ({"outputDir": "a/b/"}, "spec.outputDir 'a/b/' must be normalized"),
        ({"outputDir": "a/\x00b"}, "spec.outputDir .* must not contain control characters"),
        (
            {"sharedVolume": {"volume": {}, "mountPath": "mnt"}},
            "spec.sharedVolume.mountPath 'mnt' must be an absolute",
        ),
        (
            {"sharedVolume": {"volume": {}, "mountPath": "/"}},
            "spec.sharedVolume.mountPath '/' must be normalized",
        ),
        (
            {"sharedVolume": {"volume": {}, "mountPath": "/m/../x"}},
            "spec.sharedVolume.mountPath '/m/../x' must be normalized",
        ),
        ({"sharedVolume": {"volume": {}, "mountPath": "/m\x7f"}}, "mountPath .* must not contain control"),
    ],
)
def test_specs_a_schema_cannot_check_are_rejected(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_job(job(**spec))


def test_no_refund_for_checkpoints_the_dying_attempt_commits() -> None:
    restarting = {
        "phase": "Restarting",
        "attempt": 1,
        "restarts": 1,
        "budgetUsed": 1,
        "consecutiveFailures": 1,
        "checkpointStepAtRestart": 10,
        "nextAttemptAfter": format_time(NOW + timedelta(seconds=5)),
    }
    st = run(
        job(restarting), [pod(0, attempt=0, deleting=True)], Observations(checkpoint=CheckpointRef(step=11))
    ).status
    assert st is not None and st.budget_used == 1 and st.checkpoint_step_at_restart == 10
    created = run(
        job(restarting), [], Observations(checkpoint=CheckpointRef(step=11)), now=NOW + timedelta(seconds=5)
    )
    assert created.status is not None and created.status.resumed_from_step == 11


def test_pods_the_job_does_not_own_are_neither_counted_nor_deleted() -> None:
    squatter = pod(1, owner="someone-else")
    plan = run(job(RUNNING), [pod(0), squatter])
    st = plan.status
    assert st is not None and st.last_failure is not None and st.last_failure.reason == Reason.POD_DELETED
    assert [d.name for d in plan.delete_pods] == ["llm-a0-0"]
    fresh = run(job(), [pod(0, owner="deleted-namesake"), pod(1, owner="deleted-namesake")])
    assert [p["metadata"]["name"] for p in fresh.create_pods] == ["llm-a0-0", "llm-a0-1"]
    assert not fresh.delete_pods


def test_deletions_name_the_pod_they_decided_on() -> None:
    plan = run(job(RUNNING), [pod(0), pod(1), pod(0, attempt=5)])
    assert plan.delete_pods == [DeletePod("llm-a5-0", "pod-a5-0")]


def test_a_reconcile_error_is_recorded_once_and_cleared_by_the_next_good_pass() -> None:
    first = decide_error(RUNNING, "FailedCreate", "pod team/llm-a0-1: exceeded quota", NOW)
    [write, event] = first.steps
    assert isinstance(write, WriteStatus) and event == EmitEvent(
        "Warning", "FailedCreate", "pod team/llm-a0-1: exceeded quota"
    )
    recorded = status_to_dict(write.status)
    error = next(c for c in recorded["conditions"] if c["type"] == "ReconcileError")
    assert (error["status"], error["reason"]) == ("True", "FailedCreate")
    again = decide_error(recorded, "FailedCreate", "pod team/llm-a0-1: exceeded quota", NOW)
    assert [type(s) for s in again.steps] == [EmitEvent], "the same error again writes no status"
    cleared = run(job(recorded), [pod(0), pod(1)]).status
    assert cleared is not None
    assert next(c for c in cleared.conditions if c["type"] == "ReconcileError")["status"] == "False"
    settled = {**RUNNING, "observedGeneration": 1}
    assert run(job(settled), [pod(0), pod(1)]).status is None, "no error, nothing to clear, no write"


def test_an_evicted_rank_already_gone_still_explains_the_restart() -> None:
    """The pass that sees the survivor's exit comes after the evicted pod was removed: the
    informer's last state of it (Observations.departed) says it was evicted, so the restart is
    not counted. Without that last state the rank merely disappeared, which counts."""
    evicted_at = format_time(NOW - timedelta(seconds=4))
    disruption = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"}
    evicted = pod(0, conditions=[{**disruption, "lastTransitionTime": evicted_at}], deleting=True)
    survivor = pod(1, phase="Failed", exit_code=1, finished=NOW - timedelta(seconds=1))
    another_attempt = pod(0, attempt=7, conditions=[{**disruption, "lastTransitionTime": evicted_at}])
    for departed, reason, counted in (
        ([evicted], Reason.EVICTED, False),
        ([another_attempt], Reason.ERROR, True),
        ([], Reason.ERROR, True),
    ):
        st = run(job(RUNNING), [survivor], Observations(departed=departed)).status
        assert st is not None and st.last_failure is not None
        assert (st.last_failure.reason, st.restarts, st.uncounted_restarts) == (
            reason.value,
            int(counted),
            int(not counted),
        ), departed
