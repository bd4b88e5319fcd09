"""Restarts in place (core/inplace.py): the decisions pass by pass, each from the status and pods
alone, so a controller that dies at any point resumes the same restart; and what stays a restart
with new pods."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from controller.api.constants import Phase
from controller.api.types import status_to_dict
from controller.core.observations import NodeState, Observations
from controller.core.plan import AnnotatePod, CreatePods, EmitEvent, Plan
from respawn_protocol import inplace
from tests.support.core_inputs import NOW, RUNNING, device_report, fault_entry, job, pod, run

POLICY = {"maxRestarts": 2, "backoff": {"initialSeconds": 10, "maxSeconds": 40}, "restartInPlace": True}


def supervised(
    body: dict[str, Any], attempt: int, state: str, exit_code: int | None = None
) -> dict[str, Any]:
    """A worker pod whose supervisor says `state` of `attempt` (respawn_protocol/inplace.py)."""
    said = inplace.State(attempt, state, "2026-11-23T11:59:58Z", exit_code, "rank 1 was killed by SIGKILL")
    body["metadata"].setdefault("annotations", {})[inplace.STATE] = said.encode()
    return body


def commands(plan: Plan) -> dict[str, inplace.Command | None]:
    return {s.name: inplace.decode_command(s.value) for s in plan.of(AnnotatePod) if s.key == inplace.COMMAND}


def told(pods: list[dict[str, Any]], plan: Plan) -> None:
    """Carry out the plan's annotations, as the API server would."""
    for step in plan.of(AnnotatePod):
        target = next(p for p in pods if p["metadata"]["name"] == step.name)
        target["metadata"].setdefault("annotations", {})[step.key] = step.value


def saved(plan: Plan, before: dict[str, Any]) -> dict[str, Any]:
    """The status the plan wrote, as the API returns it (or the old one when it wrote none)."""
    return json.loads(json.dumps(status_to_dict(plan.status))) if plan.status is not None else before


def gang(attempt: int = 0, states: tuple[str, str] = ("running", "running")) -> list[dict[str, Any]]:
    return [supervised(pod(rank), attempt, states[rank]) for rank in (0, 1)]


def test_a_killed_rank_restarts_in_place_pass_by_pass() -> None:
    pods = gang()
    supervised(pods[1], 0, inplace.FAILING, 137)
    plan = run(job(RUNNING, failurePolicy=POLICY), pods)
    st = plan.status
    assert st is not None and (st.phase, st.attempt, st.pod_attempt, st.restarts) == (
        Phase.RESTARTING,
        1,
        0,
        1,
    )
    assert st.last_failure is not None and (st.last_failure.pod, st.last_failure.exit_code) == (
        "llm-a0-1",
        137,
    )
    assert "rank 1 was killed by SIGKILL" in st.last_failure.message
    assert plan.delete_pods == [] and plan.of(CreatePods) == []
    assert commands(plan) == {p: inplace.Command(1, run=False) for p in ("llm-a0-0", "llm-a0-1")}
    assert "in place" in plan.events[0].message
    status = saved(plan, {})
    told(pods, plan)

    # The survivor still runs: nothing is said twice, nothing starts.
    waiting = run(job(status, failurePolicy=POLICY), pods, now=NOW + timedelta(seconds=30))
    assert commands(waiting) == {} and waiting.of(CreatePods) == [] and waiting.delete_pods == []
    status = saved(waiting, status)

    # Both stopped, the backoff passed: every supervisor is told to start attempt 1 in its pod.
    for p in pods:
        supervised(p, 0, inplace.STOPPED)
    start = run(job(status, failurePolicy=POLICY), pods, now=NOW + timedelta(seconds=30))
    assert commands(start) == {p: inplace.Command(1, run=True) for p in ("llm-a0-0", "llm-a0-1")}
    st = start.status
    assert st is not None and (st.phase, st.replicas, st.pod_attempt) == (Phase.PENDING, 2, 0)
    assert start.of(CreatePods) == [] and start.delete_pods == []
    assert "in the pods of attempt 0" in start.events[-1].message
    status = saved(start, status)
    told(pods, start)

    # They run attempt 1: the job runs again; the pods' own attempt is still 0.
    for p in pods:
        supervised(p, 1, inplace.RUNNING)
    up = run(job(status, failurePolicy=POLICY), pods, now=NOW + timedelta(seconds=31))
    st = up.status
    assert st is not None and (st.phase, st.attempt, st.pod_attempt) == (Phase.RUNNING, 1, 0)
    assert commands(up) == {} and up.delete_pods == []
    status = saved(up, status)

    # A second failure restarts in place again, in the same pods; every pod succeeding ends the job.
    supervised(pods[0], 1, inplace.FAILING, 1)
    again = run(job(status, failurePolicy=POLICY), pods, now=NOW + timedelta(seconds=60))
    assert again.status is not None and (again.status.attempt, again.status.pod_attempt) == (2, 0)
    assert set(commands(again).values()) == {inplace.Command(2, run=False)} and again.delete_pods == []
    told(pods, again)
    # The pass after: pods that now serve attempt 1 of pods made by attempt 0 are still kept.
    stopping = run(job(saved(again, status), failurePolicy=POLICY), pods, now=NOW + timedelta(seconds=61))
    assert stopping.delete_pods == [] and commands(stopping) == {}
    supervised(pods[0], 1, inplace.RUNNING)
    for p in pods:
        supervised(p, 1, inplace.RUNNING)["status"]["phase"] = "Succeeded"
    done = run(job(status, failurePolicy=POLICY), pods, now=NOW + timedelta(seconds=60))
    assert done.status is not None and done.status.phase is Phase.SUCCEEDED


def test_a_controller_that_died_mid_restart_carries_on_from_the_status() -> None:
    restarting = {
        **RUNNING,
        "phase": "Restarting",
        "attempt": 1,
        "podAttempt": 0,
        "replicas": None,
        "nextAttemptAfter": "2026-11-23T12:00:10Z",
        "failureSeenAt": "2026-11-23T12:00:00Z",
    }
    # Died after recording the restart, before telling the pods: the next pass tells them.
    pods = gang()
    assert set(commands(run(job(restarting, failurePolicy=POLICY), pods)).values()) == {
        inplace.Command(1, run=False)
    }
    # Died after telling one pod to start: the other is told, the first not again.
    pods = gang(states=("stopped", "stopped"))
    pods[0]["metadata"]["annotations"][inplace.COMMAND] = inplace.Command(1, run=True).encode()
    plan = run(job(restarting, failurePolicy=POLICY), pods, now=NOW + timedelta(seconds=20))
    assert commands(plan) == {"llm-a0-1": inplace.Command(1, run=True)}
    assert plan.status is not None and plan.status.phase is Phase.PENDING
    # ... and once that one already runs attempt 1, it is not told to stop again.
    supervised(pods[0], 1, inplace.RUNNING)
    plan = run(job(restarting, failurePolicy=POLICY), pods, now=NOW + timedelta(seconds=20))
    assert commands(plan) == {"llm-a0-1": inplace.Command(1, run=True)} and plan.delete_pods == []


def test_a_kept_pod_lost_before_the_start_recreates_the_gang() -> None:
    restarting = {**RUNNING, "phase": "Restarting", "attempt": 1, "podAttempt": 0, "replicas": None}
    pods = gang(states=("stopped", "stopped"))
    pods[1]["status"]["phase"] = "Failed"  # the supervisor itself died
    plan = run(job(restarting, failurePolicy=POLICY), pods)
    assert plan.status is not None and plan.status.pod_attempt is None
    assert {d.name for d in plan.delete_pods} == {"llm-a0-0", "llm-a0-1"}
    assert [e.reason for e in plan.of(EmitEvent)] == ["InPlaceRestartAbandoned"]
    assert "llm-a0-1 cannot run the next attempt" in plan.events[0].message
    # Once they are gone, attempt 1 gets pods of its own.
    [create] = run(job(saved(plan, restarting), failurePolicy=POLICY), [], now=NOW + timedelta(minutes=1)).of(
        CreatePods
    )
    assert (create.attempt, create.indices) == (1, (0, 1))


def failing_gang() -> list[dict[str, Any]]:
    pods = gang()
    supervised(pods[1], 0, inplace.FAILING, 137)
    return pods


def test_what_still_recreates_the_pods() -> None:
    cases: dict[str, tuple[dict[str, Any], list[dict[str, Any]], Observations]] = {
        "not asked for": (job(RUNNING), failing_gang(), Observations()),
        "no supervisor on a pod": (
            job(RUNNING, failurePolicy=POLICY),
            [pod(0), supervised(pod(1), 0, inplace.FAILING, 137)],
            Observations(),
        ),
        "the supervisor itself died": (
            job(RUNNING, failurePolicy=POLICY),
            [
                supervised(pod(0), 0, "running"),
                supervised(pod(1, phase="Failed", exit_code=137), 0, "running"),
            ],
            Observations(),
        ),
        "a node of the gang is not ready": (
            job(RUNNING, failurePolicy=POLICY),
            [supervised(pod(0, node="node-1"), 0, "running"), failing_gang()[1]],
            Observations(nodes={"node-1": NodeState(ready=False, not_ready_since=NOW)}),
        ),
        "a device fault on the gang's node": (
            job(RUNNING, failurePolicy=POLICY),
            failing_gang(),
            Observations(
                device_reports={"node-0": device_report("node-0", fault_entry("Ascend910-0", "RestartNPU"))}
            ),
        ),
        "evicted": (
            job(RUNNING, failurePolicy=POLICY),
            [
                supervised(pod(0), 0, "running"),
                supervised(
                    pod(1, phase="Failed", conditions=[{"type": "DisruptionTarget", "status": "True"}]),
                    0,
                    "running",
                ),
            ],
            Observations(),
        ),
    }
    for name, (body, pods, obs) in cases.items():
        plan = run(body, pods, obs)
        assert plan.status is not None and plan.status.phase is Phase.RESTARTING, name
        assert plan.status.pod_attempt is None, name
        assert commands(plan) == {}, name
        assert {d.name for d in plan.delete_pods} >= {"llm-a0-1"}, name


def test_a_permanent_error_fails_the_job_and_deletes_the_pods() -> None:
    pods = gang()
    supervised(pods[1], 0, inplace.STOPPED, 78)  # ExitCode.CONFIG_ERROR
    plan = run(job(RUNNING, failurePolicy=POLICY), pods)
    assert plan.status is not None and plan.status.phase is Phase.FAILED
    assert {d.name for d in plan.delete_pods} == {"llm-a0-0", "llm-a0-1"} and commands(plan) == {}


def test_suspending_a_gang_kept_in_place_deletes_its_pods() -> None:
    status = {**RUNNING, "attempt": 2, "podAttempt": 0}
    pods = gang(attempt=2)
    plan = run(job(status, failurePolicy=POLICY, suspend=True), pods)
    assert plan.status is not None and (plan.status.phase, plan.status.pod_attempt) == (Phase.SUSPENDED, None)
    assert {d.name for d in plan.delete_pods} == {"llm-a0-0", "llm-a0-1"}


def test_malformed_supervisor_words_are_ignored() -> None:
    for value in (
        "",
        "[]",
        '{"attempt": -1, "state": "running"}',
        '{"attempt": 1, "state": "dancing"}',
        "x" * 2000,
    ):
        assert inplace.decode_state(value) is None, value
    for value in ('{"attempt": 1}', '{"attempt": "1", "run": true}', '{"attempt": 1, "run": "yes"}'):
        assert inplace.decode_command(value) is None, value
    body = pod(0)
    body["metadata"]["annotations"] = {inplace.STATE: "{not json"}
    plan = run(job(RUNNING, failurePolicy=POLICY), [body, supervised(pod(1), 0, "running")])
    assert plan.status is None or plan.status.phase is Phase.RUNNING
