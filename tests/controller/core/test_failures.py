"""Table tests of the failure policy: detection per worker, root cause, classification."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controller.api.constants import Action, Reason
from controller.api.types import parse_failure_policy
from controller.core.observations import NodeState, Observations
from controller.core.policy import failures
from controller.core.policy.failures import Failure, Verdict
from controller.core.timefmt import format_time
from respawn_protocol.contract import (
    ExitClass,
    ExitCode,
    PreflightCheck,
    classify_exit,
    preflight_message,
)
from tests.support.core_inputs import NOW, RUNNING, context, device_report, fault_entry, job, pod


def disrupted(reason: str) -> dict[str, Any]:
    moved = format_time(NOW - timedelta(seconds=3))
    condition = {"type": "DisruptionTarget", "status": "True", "reason": reason, "lastTransitionTime": moved}
    return pod(1, conditions=[condition])


LOST = Observations(nodes={"node-0": NodeState(False, NOW - timedelta(seconds=31))})
FLAKY = Observations(nodes={"node-0": NodeState(False, NOW - timedelta(seconds=5))})
FAULTY = Observations(
    device_reports={"node-0": device_report("node-0", fault_entry("Ascend910-3", "SeparateNPU"))}
)


@pytest.mark.parametrize(
    ("worker", "obs", "reason", "at"),
    [
        (pod(1), Observations(), None, None),
        (pod(1, phase="Succeeded", exit_code=0), Observations(), None, None),
        (pod(1, phase="Failed", exit_code=1, finished=NOW - timedelta(seconds=2)), None, Reason.ERROR, -2),
        (pod(1, phase="Failed", exit_code=137, reason="OOMKilled"), None, Reason.OOM_KILLED, 0),
        (pod(1, phase="Failed", exit_code=ExitCode.CONFIG_ERROR), None, Reason.PERMANENT_ERROR, 0),
        (pod(1, phase="Failed", exit_code=ExitCode.STOPPED), None, Reason.STOPPED, 0),
        (pod(1, phase="Failed", exit_code=ExitCode.TERMINATED), None, Reason.ERROR, 0),
        (pod(1, phase="Failed", exit_code=ExitCode.PREFLIGHT_FAILED), None, Reason.PREFLIGHT_FAILED, 0),
        (pod(1, phase="Failed", exit_code=0), None, Reason.ERROR, 0),
        (disrupted("EvictionByEvictionAPI"), None, Reason.EVICTED, -3),
        (disrupted("PreemptionByScheduler"), None, Reason.PREEMPTED, -3),
        (disrupted("DeletionByTaintManager"), None, Reason.NODE_LOST, -3),
        (disrupted("DeletionByPodGC"), None, Reason.NODE_LOST, -3),
        (pod(1, deleting=True), None, Reason.POD_DELETED, 0),
        (pod(1), LOST, Reason.NODE_LOST, -31),
        (pod(1), FLAKY, None, None),
        (pod(1), FAULTY, Reason.DEVICE_FAULT, 0),
    ],
)
def test_detect(
    worker: dict[str, Any], obs: Observations | None, reason: Reason | None, at: int | None
) -> None:
    ctx, _ = context(job(RUNNING), [worker], obs)
    found = failures.detect(worker, ctx)
    if reason is None:
        assert found is None
        return
    assert found is not None and found.reason is reason and found.pod == "llm-a0-1"
    assert found.at == NOW + timedelta(seconds=at or 0)


def test_kubelet_eviction_is_evicted() -> None:
    evicted = pod(1, phase="Failed")
    evicted["status"].update(reason="Evicted", message="low on ephemeral storage")
    ctx, _ = context(job(RUNNING), [evicted])
    found = failures.detect(evicted, ctx)
    assert found is not None and (found.reason, found.message) == (Reason.EVICTED, "low on ephemeral storage")


@pytest.mark.parametrize("code", [*ExitCode, 2, 137, 255])
def test_exit_codes_mean_what_the_protocol_says(code: int) -> None:
    """The controller reads a trainer's exit code through the protocol's classify_exit only."""
    worker = pod(1, phase="Failed", exit_code=int(code))
    ctx, _ = context(job(RUNNING), [worker])
    found = failures.detect(worker, ctx)
    assert found is not None
    expected = {
        ExitClass.PERMANENT: Reason.PERMANENT_ERROR,
        ExitClass.STOPPED: Reason.STOPPED,
        ExitClass.INFRASTRUCTURE: Reason.PREFLIGHT_FAILED,
    }
    assert found.reason is expected.get(classify_exit(int(code)), Reason.ERROR)


@pytest.mark.parametrize(
    ("said", "quoted"),
    [
        ("rank 3 (local 1) was killed by SIGKILL\n", " (rank 3 (local 1) was killed by SIGKILL)"),
        ("first line\nsecond line", " (first line)"),
        ("x" * 500, f" ({'x' * 200})"),
        ("  \n", ""),
        (None, ""),
    ],
)
def test_an_error_quotes_the_first_line_of_the_termination_message(said: str | None, quoted: str) -> None:
    """A pod of several ranks says which rank failed in its termination message."""
    worker = pod(1, phase="Failed", exit_code=137)
    worker["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = said
    ctx, _ = context(job(RUNNING), [worker])
    found = failures.detect(worker, ctx)
    assert found is not None and found.message == "container trainer exited with code 137" + quoted


@pytest.mark.parametrize(("down_for", "remaining"), [(0, 30.0), (29, 1.0), (30, 0.0), (45, -15.0)])
def test_node_lost_deadline_is_one_answer(down_for: int, remaining: float) -> None:
    obs = Observations(nodes={"node-0": NodeState(False, NOW - timedelta(seconds=down_for))})
    ctx, _ = context(job(RUNNING), [pod(1)], obs)
    lost = failures.node_lost_in(pod(1), ctx)
    assert lost is not None and lost[0] == remaining
    assert (failures.detect(pod(1), ctx) is not None) == (remaining <= 0)


def test_ready_or_unknown_nodes_have_no_deadline() -> None:
    ready = Observations(nodes={"node-0": NodeState(True)})
    for obs in (ready, Observations()):
        ctx, _ = context(job(RUNNING), [pod(1)], obs)
        assert failures.node_lost_in(pod(1), ctx) is None


def test_missing_ranks_name_the_first_gone_pod() -> None:
    ctx, status = context(job(RUNNING), [pod(1)])
    [gone] = failures.missing_ranks(ctx, status)
    assert (gone.reason, gone.pod, gone.message) == (
        Reason.POD_DELETED,
        "llm-a0-0",
        "worker rank 0 disappeared",
    )
    full, status = context(job(RUNNING), [pod(0), pod(1)])
    assert failures.missing_ranks(full, status) == []


def test_root_cause_is_the_earliest_then_the_first_pod_by_name() -> None:
    a = Failure(Reason.ERROR, "", NOW, "llm-a0-1")
    b = Failure(Reason.ERROR, "", NOW, "llm-a0-0")
    c = Failure(Reason.NODE_LOST, "", NOW - timedelta(seconds=1), "llm-a0-1")
    assert failures.root_cause([a, b]) is b
    assert failures.root_cause([a, b, c]) is c
    assert failures.root_cause([]) is None


def rules(*rules: dict[str, Any]) -> Any:
    return parse_failure_policy({"rules": list(rules)})


def on_exit(action: str, operator: str) -> dict[str, Any]:
    return {"action": action, "onExitCodes": {"operator": operator, "values": [42]}}


EXIT_42 = Failure(Reason.ERROR, "", NOW, exit_code=42, conditions=frozenset({("Custom", "True")}))


@pytest.mark.parametrize(
    ("policy", "failure", "action"),
    [
        (rules(), EXIT_42, Action.RESTART_JOB),
        (rules(), Failure(Reason.PERMANENT_ERROR, "", NOW), Action.FAIL_JOB),
        (rules(), Failure(Reason.EVICTED, "", NOW), Action.RESTART_JOB_IGNORE_BUDGET),
        (rules(), Failure(Reason.PREEMPTED, "", NOW), Action.RESTART_JOB_IGNORE_BUDGET),
        (rules(), Failure(Reason.NODE_LOST, "", NOW), Action.RESTART_JOB_IGNORE_BUDGET),
        (rules(), Failure(Reason.DEVICE_FAULT, "", NOW), Action.RESTART_JOB_IGNORE_BUDGET),
        (rules(), Failure(Reason.STOPPED, "", NOW), Action.RESTART_JOB_IGNORE_BUDGET),
        (rules(), Failure(Reason.PREFLIGHT_FAILED, "", NOW), Action.RESTART_JOB_IGNORE_BUDGET),
        (rules(), Failure(Reason.OOM_KILLED, "", NOW), Action.RESTART_JOB),
        (rules(), Failure(Reason.PROGRESS_TIMEOUT, "", NOW), Action.RESTART_JOB),
        (
            rules({"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}),
            EXIT_42,
            Action.FAIL_JOB,
        ),
        (
            rules({"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [42]}}),
            EXIT_42,
            Action.RESTART_JOB,
        ),
        (
            rules({"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}),
            Failure(Reason.EVICTED, "", NOW),
            Action.RESTART_JOB_IGNORE_BUDGET,
        ),
        (rules({"action": "FailJob", "onPodConditions": [{"type": "Custom"}]}), EXIT_42, Action.FAIL_JOB),
        (
            rules({"action": "RestartJobIgnoreBudget", "onReasons": ["Error"]}),
            EXIT_42,
            Action.RESTART_JOB_IGNORE_BUDGET,
        ),
        (
            rules(
                {"action": "RestartJobIgnoreBudget", "onReasons": ["Error"]},
                {"action": "FailJob", "onReasons": ["Error"]},
            ),
            EXIT_42,
            Action.RESTART_JOB_IGNORE_BUDGET,
        ),
    ],
)
def test_classify_rules_first_then_defaults(policy: Any, failure: Failure, action: Action) -> None:
    assert failures.classify(failure, policy).action is action


def test_a_verdict_names_a_faulty_node_only_for_node_faults() -> None:
    def on_node(reason: Reason) -> Verdict:
        return Verdict(Failure(reason, "", NOW, node="node-3"), Action.RESTART_JOB)

    assert on_node(Reason.DEVICE_FAULT).faulty_node == "node-3"
    assert on_node(Reason.NODE_LOST).faulty_node == "node-3"
    assert on_node(Reason.ERROR).faulty_node is None


def test_an_exit_while_a_peer_node_is_not_ready_is_the_node_s_fault() -> None:
    """The survivor of a peer on a NotReady node exits 1 long before the node counts as lost: the
    restart is NodeLost (uncounted, node avoided), not the job's error."""
    survivor = pod(1, phase="Failed", exit_code=1, node="node-1", finished=NOW - timedelta(seconds=1))
    ctx, _ = context(job(RUNNING), [pod(0), survivor], FLAKY)
    failure = failures.detect(survivor, ctx)
    assert failure is not None and failure.reason is Reason.NODE_LOST and failure.node == "node-0"
    assert "exited with code 1 while node node-0 of the gang was not ready" in failure.message
    verdict = failures.classify(failure, ctx.policy)
    assert not verdict.counted and verdict.faulty_node == "node-0"
    # With every node ready it stays the job's own error; a permanent exit is never re-attributed.
    ready, _ = context(job(RUNNING), [pod(0), survivor])
    assert failures.detect(survivor, ready).reason is Reason.ERROR  # type: ignore[union-attr]
    killed = pod(1, phase="Failed", exit_code=137, node="node-1")
    flaky_killed, _ = context(job(RUNNING), [pod(0), killed], FLAKY)
    assert failures.detect(killed, flaky_killed).reason is Reason.ERROR, "a signal's death is its own"  # type: ignore[union-attr]
    permanent = pod(1, phase="Failed", exit_code=ExitCode.CONFIG_ERROR, node="node-1")
    flaky, _ = context(job(RUNNING), [pod(0), permanent], FLAKY)
    assert failures.detect(permanent, flaky).reason is Reason.PERMANENT_ERROR  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("said", "avoided"),
    [
        (preflight_message(PreflightCheck.FREE_SPACE, "12 MiB free, 2 checkpoints need 40 MiB"), True),
        (preflight_message(PreflightCheck.WRITABLE, "cannot create a file: Read-only file system"), True),
        (preflight_message(PreflightCheck.SHARED, "no probe of attempt 0 from rank 0 within 60 s"), False),
        (preflight_message(PreflightCheck.STORE, "s3://ckpt/ns/job: connection refused"), False),
        ("rank 3 (local rank 1 of 2, pid 812) exited with code 74", False),
        (None, False),
    ],
)
def test_a_failed_preflight_is_uncounted_and_avoids_the_node_only_for_its_disk(
    said: str | None, avoided: bool
) -> None:
    """Exit 74: the environment's fault. A full or read-only disk is the node's (avoided next time);
    a directory the ranks do not share is the volume's, as is a check the message does not name."""
    worker = pod(1, phase="Failed", exit_code=ExitCode.PREFLIGHT_FAILED, node="node-2")
    worker["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = said
    ctx, _ = context(job(RUNNING), [pod(0), worker])
    failure = failures.detect(worker, ctx)
    assert failure is not None and failure.reason is Reason.PREFLIGHT_FAILED
    if said:
        assert said.split(":")[0] in failure.message
    verdict = failures.classify(failure, ctx.policy)
    assert not verdict.counted
    assert verdict.faulty_node == ("node-2" if avoided else None)
