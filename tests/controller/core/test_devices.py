"""Table tests of device-fault attribution: MindCluster's levels on a running worker, the window
around a worker's exit (a fault reported before or after it), the conversion of a counted restart
whose fault was reported after the restart was recorded, persisting entries older than the
attempt, and when `faultyNodes` are forgotten. Reports are read by the core's own parser from the
device plugin's format (tests/support/core_inputs.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from controller.api.constants import Action, Phase, Reason
from controller.api.types import JobStatus, parse_failure_policy, parse_status, status_to_dict
from controller.core.devicefaults import NodeReport
from controller.core.observations import Observations
from controller.core.plan import EmitEvent, Plan
from controller.core.timefmt import format_time
from tests.support.core_inputs import NOW, RUNNING, device_report, fault_entry, job, pod, run

EXITED = NOW - timedelta(seconds=3)  # the crashed worker's finishedAt
STARTED = NOW - timedelta(seconds=600)  # when the attempt's pods started (status.startTime)
HELD = "Ascend910-2,Ascend910-3"  # the chips the device plugin gave the worker on node-1
RESTART_LEVELS = ("RestartRequest", "RestartBusiness", "RestartNPU", "FreeRestartNPU")
SEPARATE_LEVELS = ("PreSeparateNPU", "SeparateNPU", "ManuallySeparateNPU", "ALevelNotKnownYet")
IGNORE_LEVELS = ("NotHandleFault", "SubHealthFault")


def seen(*reports: NodeReport) -> Observations:
    """What the reconcile pass observes: each node's report."""
    return Observations(device_reports={r.node: r for r in reports})


def on_node_1(*entries: dict[str, Any], **options: Any) -> Observations:
    return seen(device_report("node-1", *entries, **options))


def at(seconds: float, base: datetime = EXITED) -> datetime:
    return base + timedelta(seconds=seconds)


def gang(worker: dict[str, Any]) -> list[dict[str, Any]]:
    """Rank 0 runs on node-0; rank 1 (`worker`) is the one on node-1."""
    return [pod(0, started=STARTED), worker]


def running_on_node_1(chips: str | None = HELD, started: datetime | None = STARTED) -> dict[str, Any]:
    return pod(1, node="node-1", chips=chips, started=started)


def crashed_on_node_1(chips: str | None = HELD, code: int = 137) -> dict[str, Any]:
    return pod(
        1, node="node-1", phase="Failed", exit_code=code, finished=EXITED, chips=chips, started=STARTED
    )


def restarted(plan: Plan) -> JobStatus:
    st = plan.status
    assert st is not None and st.phase is Phase.RESTARTING and st.last_failure is not None, plan
    return st


def assert_running(plan: Plan) -> None:
    assert plan.status is None or plan.status.phase is Phase.RUNNING, plan


def assert_device_fault(st: JobStatus, *, avoided: bool) -> None:
    assert st.last_failure is not None
    assert (st.last_failure.reason, st.last_failure.counted) == (Reason.DEVICE_FAULT, False)
    assert (st.restarts, st.uncounted_restarts, st.budget_used) == (0, 1, 0)
    assert st.faulty_nodes == (("node-1",) if avoided else ())


def assert_counted_error(st: JobStatus, chips: tuple[str, ...] | None = tuple(HELD.split(","))) -> None:
    """A counted Error, which records the worker's chips: a report that comes later can still be
    matched to them."""
    assert st.last_failure is not None
    assert (st.last_failure.reason, st.last_failure.counted) == (Reason.ERROR, True)
    assert (st.restarts, st.uncounted_restarts, st.budget_used, st.faulty_nodes) == (1, 0, 1, ())
    assert st.last_failure.chips == chips


# -- every level, on a running worker's chip and near an exit --------------------------------------


@pytest.mark.parametrize(
    ("level", "acts", "avoided"),
    [
        *[(level, False, False) for level in IGNORE_LEVELS],
        *[(level, True, False) for level in RESTART_LEVELS],
        *[(level, True, True) for level in SEPARATE_LEVELS],
    ],
)
def test_each_level(level: str, acts: bool, avoided: bool) -> None:
    """Ignore-class levels never restart; restart-class ones restart uncounted and keep the node;
    separate-class ones restart uncounted and avoid it. The same for a running worker whose chip
    faults and for a worker that exited a second before its chip's fault."""
    obs = on_node_1(fault_entry("Ascend910-3", level, at=NOW - timedelta(seconds=10)))
    plan = run(job(RUNNING), gang(running_on_node_1()), obs)
    if acts:
        st = restarted(plan)
        assert_device_fault(st, avoided=avoided)
        assert st.last_failure is not None and st.last_failure.pod == "llm-a0-1"
        assert f"Ascend910-3 {level} (80E18402)" in st.last_failure.message
    else:
        assert_running(plan)
    obs = on_node_1(fault_entry("Ascend910-3", level, at=at(1)))
    st = restarted(run(job(RUNNING), gang(crashed_on_node_1()), obs))
    if acts:
        assert_device_fault(st, avoided=avoided)
    else:
        assert_counted_error(st)


FIVE_AGO = NOW - timedelta(seconds=5)


@pytest.mark.parametrize(
    ("obs", "interrupts", "explains_exit", "avoided"),
    [
        # An operator's manual separation (the ManuallySeparateNPU key; the document's time).
        (on_node_1(manual="Ascend910-2"), True, True, True),
        (on_node_1(manual="Ascend910-6"), False, False, False),
        # A node fault (no chip) touches every chip.
        (on_node_1(fault_entry("", "", codes="NodeFault", at=FIVE_AGO)), True, True, True),
        # A chip being reset has no fault time: it cannot be told from a reset an earlier attempt
        # already restarted for, so it does not interrupt a running worker; the document's time,
        # next to an exit, explains the exit.
        (on_node_1(recovering="Ascend910-3"), False, True, False),
        (on_node_1(recovering="Ascend910-6"), False, False, False),
        # A fault on a chip of the node that the worker does not hold.
        (on_node_1(fault_entry("Ascend910-5", "SeparateNPU", at=FIVE_AGO)), False, False, False),
        (on_node_1(fault_entry("Ascend910-5", "RestartNPU", at=FIVE_AGO)), False, False, False),
    ],
)
def test_the_chips_a_worker_holds(
    obs: Observations, interrupts: bool, explains_exit: bool, avoided: bool
) -> None:
    plan = run(job(RUNNING), gang(running_on_node_1()), obs)
    if interrupts:
        assert_device_fault(restarted(plan), avoided=avoided)
    else:
        assert_running(plan)
    st = restarted(run(job(RUNNING), gang(crashed_on_node_1()), obs))
    if explains_exit:
        assert_device_fault(st, avoided=avoided)
    else:
        assert_counted_error(st)


def test_a_worker_without_an_allocation_annotation_holds_the_whole_node() -> None:
    obs = on_node_1(fault_entry("Ascend910-7", "SeparateNPU", at=NOW - timedelta(seconds=10)))
    running = restarted(run(job(RUNNING), gang(running_on_node_1(chips=None)), obs))
    assert_device_fault(running, avoided=True)
    exited = restarted(run(job(RUNNING), gang(crashed_on_node_1(chips=None)), obs))
    assert_device_fault(exited, avoided=True)
    assert exited.last_failure is not None and exited.last_failure.chips is None


# -- a persisting entry older than the attempt -----------------------------------------------------


@pytest.mark.parametrize(
    ("level", "fault_at", "restarts"),
    [
        ("RestartBusiness", STARTED - timedelta(seconds=30), False),  # the last attempt's fault, still listed
        ("RestartNPU", STARTED - timedelta(seconds=1), False),
        ("RestartBusiness", STARTED + timedelta(seconds=1), True),  # a new fault on this attempt
        ("RestartBusiness", None, False),  # no time of its own: cannot be told from the old one
    ],
)
def test_a_persisting_entry_older_than_the_attempt(
    level: str, fault_at: datetime | None, restarts: bool
) -> None:
    """A restart-class entry restarts a running attempt only if it is newer than the attempt's
    pods; a separate-class entry of the same time always does (the next attempt avoids the node,
    so it cannot loop)."""
    status = {**RUNNING, "attempt": 1}
    worker = pod(1, attempt=1, node="node-1", chips=HELD, started=STARTED)
    gang_1 = [pod(0, attempt=1, started=STARTED), worker]
    plan = run(job(status), gang_1, on_node_1(fault_entry("Ascend910-3", level, at=fault_at)))
    if restarts:
        assert_device_fault(restarted(plan), avoided=False)
    else:
        assert_running(plan)
    separated = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=fault_at))
    assert_device_fault(restarted(run(job(status), gang_1, separated)), avoided=True)


# -- an exit and a fault reported before or after it -----------------------------------------------


@pytest.mark.parametrize(
    ("obs", "device_fault", "avoided"),
    [
        # Reported before the exit, within the window (60 s by default, plus 5 s for clock skew).
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(-10))), True, True),
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(-64))), True, True),
        (on_node_1(fault_entry("Ascend910-3", "RestartBusiness", at=at(-10))), True, False),
        # The process died first and the plugin was quicker than this pass.
        (on_node_1(fault_entry("Ascend910-2", "SeparateNPU", at=at(2))), True, True),
        (on_node_1(fault_entry("Ascend910-2", "RestartNPU", at=at(2))), True, False),
        # Outside the window: the exit is the worker's own.
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(-66))), False, False),
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(-3600))), False, False),
        # A chip the worker does not hold, or a level MindCluster does not act on.
        (on_node_1(fault_entry("Ascend910-5", "SeparateNPU", at=at(-1))), False, False),
        (on_node_1(fault_entry("Ascend910-3", "NotHandleFault", at=at(-1))), False, False),
        (on_node_1(fault_entry("Ascend910-3", "SubHealthFault", at=at(1))), False, False),
        # A node fault touches every chip.
        (on_node_1(fault_entry("", "", codes="NodeFault", at=at(1))), True, True),
        # A plugin that writes no fault time: the document's UpdateTime stands in.
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=None), updated=at(2)), True, True),
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=None), updated=at(-600)), False, False),
        # No report for the worker's node (node-0's says healthy).
        (seen(device_report("node-0")), False, False),
    ],
)
def test_an_exit_near_a_fault_on_its_chips(obs: Observations, device_fault: bool, avoided: bool) -> None:
    """Each ordering twice: the report is there when the exit is seen, and it comes only after the
    restart was recorded as a counted Error (then the restart is converted)."""
    seen_with_it = restarted(run(job(RUNNING), gang(crashed_on_node_1()), obs))
    recorded = restarted(run(job(RUNNING), gang(crashed_on_node_1()), Observations()))
    assert_counted_error(recorded)
    later = run(job(status_to_dict(recorded)), [], obs, now=NOW + timedelta(seconds=1)).status or recorded
    for st in (seen_with_it, later):
        if device_fault:
            assert_device_fault(st, avoided=avoided)
            assert st.last_failure is not None and st.last_failure.time == format_time(EXITED)
            assert st.last_failure.exit_code == 137 and st.last_failure.pod == "llm-a0-1"
        else:
            assert_counted_error(st)


@pytest.mark.parametrize(
    ("window", "offset", "device_fault"),
    [(10, -14, True), (10, 14, True), (10, -16, False), (10, 16, False), (0, 0, False), (600, -500, True)],
)
def test_the_window_is_configurable(window: int, offset: float, device_fault: bool) -> None:
    body = job(RUNNING, failurePolicy={"maxRestarts": 2, "deviceFaultWindowSeconds": window})
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(offset)))
    st = restarted(run(body, gang(crashed_on_node_1()), obs, now=at(20)))
    if device_fault:
        assert_device_fault(st, avoided=True)
    else:
        assert_counted_error(st)


def test_the_trainers_own_verdicts_are_kept() -> None:
    """Exit 78 (configuration error) says what the trainer found; the fault that explains an exit
    137 at the same moment does not change it."""
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(1)))
    assert_device_fault(restarted(run(job(RUNNING), gang(crashed_on_node_1()), obs)), avoided=True)
    st = run(job(RUNNING), gang(crashed_on_node_1(code=78)), obs).status
    assert st is not None and st.phase is Phase.FAILED
    assert st.last_failure is not None and st.last_failure.reason == Reason.PERMANENT_ERROR


def test_the_failure_records_the_workers_chips() -> None:
    st = restarted(run(job(RUNNING), gang(crashed_on_node_1()), Observations()))
    assert st.last_failure is not None and st.last_failure.chips == ("Ascend910-2", "Ascend910-3")
    assert status_to_dict(st)["lastFailure"]["chips"] == ["Ascend910-2", "Ascend910-3"]
    st = restarted(run(job(RUNNING), gang(crashed_on_node_1(chips=None)), Observations()))
    assert st.last_failure is not None and st.last_failure.chips is None
    assert "chips" not in status_to_dict(st)["lastFailure"]


# -- a fault reported after the restart was recorded: conversion -----------------------------------


def counted_error(chips: list[str] | None = None, **status: Any) -> dict[str, Any]:
    """The status right after attempt 0's rank 1 exited 137 on node-1 and was counted."""
    failure = {
        "time": format_time(EXITED),
        "reason": "Error",
        "action": "RestartJob",
        "message": "container trainer exited with code 137",
        "pod": "llm-a0-1",
        "node": "node-1",
        "exitCode": 137,
        "counted": True,
        **({"chips": chips} if chips is not None else {}),
    }
    restarting = {
        "type": "Restarting",
        "status": "True",
        "reason": "Error",
        "message": failure["message"],
        "lastTransitionTime": format_time(EXITED),
    }
    return {
        "phase": "Restarting",
        "attempt": 1,
        "restarts": 1,
        "budgetUsed": 1,
        "consecutiveFailures": 1,
        "nextAttemptAfter": format_time(NOW + timedelta(seconds=120)),
        "failureSeenAt": format_time(EXITED),
        "lastFailure": failure,
        "conditions": [restarting],
        **status,
    }


def events(plan: Plan) -> list[EmitEvent]:
    return [s for s in plan.steps if isinstance(s, EmitEvent)]


@pytest.mark.parametrize(
    ("obs", "avoided"),
    [
        # The usual order: the process dies, the plugin reports seconds later.
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(2))), True),
        (on_node_1(fault_entry("Ascend910-3", "RestartBusiness", at=at(2))), False),
        (on_node_1(fault_entry("Ascend910-2", "PreSeparateNPU", at=at(55))), True),
        # The fault happened before the exit; its report came late.
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(-20))), True),
        (on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=None), updated=at(4)), True),
    ],
)
def test_a_fault_reported_after_the_restart_converts_it(obs: Observations, avoided: bool) -> None:
    plan = run(job(counted_error(["Ascend910-2", "Ascend910-3"])), [], obs, now=at(60))
    st = plan.status
    assert st is not None and st.last_failure is not None
    assert (st.phase, st.attempt) == (Phase.RESTARTING, 1)
    assert_device_fault(st, avoided=avoided)
    f = st.last_failure
    assert (f.action, f.time, f.pod, f.node, f.exit_code) == (
        Action.RESTART_JOB_IGNORE_BUDGET,
        format_time(EXITED),
        "llm-a0-1",
        "node-1",
        137,
    )
    assert f.message.startswith("device fault on node-1: Ascend910-")
    assert f.message.endswith("(container trainer exited with code 137)")
    restarting = next(c for c in st.conditions if c["type"] == "Restarting")
    assert restarting["reason"] == Reason.DEVICE_FAULT
    assert restarting["lastTransitionTime"] == format_time(EXITED)
    [event] = [e for e in events(plan) if e.reason == Reason.DEVICE_FAULT]
    assert event.type == "Warning" and "llm-a0-1" in event.message and "not counted" in event.message


def test_a_converted_restart_is_converted_once() -> None:
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(2)))
    first = run(job(counted_error(["Ascend910-3"])), [], obs)
    assert first.status is not None
    assert_device_fault(first.status, avoided=True)
    again = run(job(status_to_dict(first.status)), [], obs, now=NOW + timedelta(seconds=1))
    assert again.status is None and not events(again)


def test_the_next_attempt_avoids_the_node_when_it_is_created_in_the_same_pass() -> None:
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(2)))
    plan = run(job(counted_error(["Ascend910-3"], nextAttemptAfter=format_time(NOW))), [], obs)
    st = plan.status
    assert st is not None and st.phase is Phase.PENDING and st.faulty_nodes == ("node-1",)
    assert [p["metadata"]["name"] for p in plan.create_pods] == ["llm-a1-0", "llm-a1-1"]
    for body in plan.create_pods:
        terms = body["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["node-1"]


def test_a_running_next_attempt_is_converted_and_keeps_running() -> None:
    status = counted_error(["Ascend910-3"], phase="Running", replicas=2, nextAttemptAfter=None)
    pods = [pod(0, attempt=1, started=NOW), pod(1, attempt=1, started=NOW)]
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(2)))
    st = run(job(status), pods, obs).status
    assert st is not None and st.phase is Phase.RUNNING and st.attempt == 1
    assert_device_fault(st, avoided=True)


def test_a_status_without_chips_is_the_whole_node() -> None:
    obs = on_node_1(fault_entry("Ascend910-7", "SeparateNPU", at=at(2)))
    st = run(job(counted_error(None)), [], obs).status
    assert st is not None
    assert_device_fault(st, avoided=True)


@pytest.mark.parametrize(
    ("status", "policy"),
    [
        # A failed job stays failed: the budget is not handed back after the end.
        ({"phase": "Failed", "lastFailure": {**counted_error()["lastFailure"], "action": "FailJob"}}, {}),
        # Already uncounted, or not an exit.
        ({"lastFailure": {**counted_error()["lastFailure"], "reason": "OOMKilled"}}, {}),
        ({"lastFailure": {**counted_error()["lastFailure"], "reason": "PodDeleted"}}, {}),
        ({"lastFailure": {**counted_error()["lastFailure"], "counted": False}}, {}),
        # The user's rule says a DeviceFault is counted.
        ({}, {"rules": [{"action": "RestartJob", "onReasons": ["DeviceFault"]}]}),
    ],
)
def test_what_is_not_converted(status: dict[str, Any], policy: dict[str, Any]) -> None:
    """The same report converts the plain counted exit, and leaves each of these alone."""
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(2)))
    control = run(job(counted_error()), [], obs).status
    assert control is not None
    assert_device_fault(control, avoided=True)
    body = job(counted_error(**status), failurePolicy={"maxRestarts": 2, **policy})
    plan = run(body, [], obs)
    assert plan.status is None or (plan.status.restarts, plan.status.uncounted_restarts) == (1, 0)
    assert not [e for e in events(plan) if e.reason == Reason.DEVICE_FAULT]


def test_conversion_never_takes_the_budget_below_zero() -> None:
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=at(2)))
    st = run(job(counted_error(budgetUsed=0)), [], obs).status
    assert st is not None and (st.restarts, st.uncounted_restarts, st.budget_used) == (0, 1, 0)


# -- forgetting faulty nodes -----------------------------------------------------------------------


def avoiding(since: datetime | None, **status: Any) -> dict[str, Any]:
    """Attempt 1 runs on node-0 and avoids node-1, added to faultyNodes at `since` (None: by a
    controller that recorded no times)."""
    body: dict[str, Any] = {
        **RUNNING,
        "attempt": 1,
        "uncountedRestarts": 1,
        "faultyNodes": ["node-1"],
        **status,
    }
    if since is not None:
        body["faultyNodesSince"] = {"node-1": format_time(since)}
    return body


ATTEMPT_1 = [pod(0, attempt=1, started=STARTED), pod(1, attempt=1, started=STARTED)]
ADDED = NOW - timedelta(seconds=100)


@pytest.mark.parametrize(
    ("since", "obs", "policy", "kept"),
    [
        # The node's report says healthy, written after the node was added: forgotten.
        (ADDED, on_node_1(updated=NOW - timedelta(seconds=10)), {}, False),
        (ADDED, on_node_1(fault_entry("Ascend910-3", "NotHandleFault"), updated=NOW), {}, False),
        # Healthy, but written before the node was added (a stale copy, e.g. of a lost node).
        (ADDED, on_node_1(updated=ADDED - timedelta(seconds=60)), {}, True),
        # Still faulty, or no report at all (unknown): kept.
        (ADDED, on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=ADDED), updated=NOW), {}, True),
        (ADDED, on_node_1(fault_entry("Ascend910-3", "RestartNPU", at=ADDED), updated=NOW), {}, True),
        (ADDED, Observations(), {}, True),
        # The TTL (default 3600 s) forgets a node nobody reports on, or one that only needs a reset.
        (NOW - timedelta(seconds=3599), Observations(), {}, True),
        (NOW - timedelta(seconds=3600), Observations(), {}, False),
        (
            NOW - timedelta(hours=2),
            on_node_1(fault_entry("Ascend910-3", "RestartNPU"), updated=NOW),
            {},
            False,
        ),
        (ADDED, Observations(), {"faultyNodeTTLSeconds": 60}, False),
        # ... but not one whose report still separates a chip.
        (
            NOW - timedelta(hours=2),
            on_node_1(fault_entry("Ascend910-3", "SeparateNPU"), updated=NOW),
            {},
            True,
        ),
        (NOW - timedelta(hours=2), on_node_1(manual="Ascend910-3", updated=NOW), {}, True),
        # TTL 0: only a healthy report forgets.
        (NOW - timedelta(days=30), Observations(), {"faultyNodeTTLSeconds": 0}, True),
        (NOW - timedelta(days=30), on_node_1(updated=NOW), {"faultyNodeTTLSeconds": 0}, False),
    ],
)
def test_when_a_faulty_node_is_forgotten(
    since: datetime, obs: Observations, policy: dict[str, Any], kept: bool
) -> None:
    body = job(avoiding(since), failurePolicy={"maxRestarts": 2, **policy})
    st = run(body, ATTEMPT_1, obs).status
    if kept:  # with the time it was added
        assert st is not None and st.faulty_nodes == ("node-1",)
        assert st.faulty_nodes_since == {"node-1": format_time(since)}
        return
    assert st is not None and st.faulty_nodes == () and st.faulty_nodes_since == {}
    assert "faultyNodes" not in status_to_dict(st) and "faultyNodesSince" not in status_to_dict(st)


def test_a_status_from_an_older_controller_gets_times() -> None:
    """`faultyNodes` written as a plain list of names: each is timed from the first pass that sees it."""
    st = run(job(avoiding(None)), ATTEMPT_1, Observations()).status
    assert st is not None and st.faulty_nodes == ("node-1",)
    assert st.faulty_nodes_since == {"node-1": format_time(NOW)}
    later = run(job(status_to_dict(st)), ATTEMPT_1, Observations(), now=NOW + timedelta(seconds=3600))
    assert later.status is not None and later.status.faulty_nodes == ()


def test_forgotten_nodes_are_allowed_again() -> None:
    status = avoiding(ADDED, phase="Restarting", attempt=2, replicas=None, nextAttemptAfter=format_time(NOW))
    plan = run(job(status), [], on_node_1(updated=NOW))
    assert plan.status is not None and plan.status.faulty_nodes == ()
    assert plan.create_pods and all("affinity" not in p["spec"] for p in plan.create_pods)


def test_a_restart_records_when_the_node_was_added() -> None:
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=NOW - timedelta(seconds=1)))
    st = restarted(run(job(RUNNING), gang(running_on_node_1()), obs))
    assert st.faulty_nodes_since == {"node-1": format_time(NOW)}
    assert status_to_dict(st)["faultyNodesSince"] == {"node-1": format_time(NOW)}
    assert parse_status(status_to_dict(st)) == st


def test_the_sixteen_newest_nodes_keep_their_times() -> None:
    known = [f"n{i}" for i in range(16)]
    status = {**RUNNING, "faultyNodes": known, "faultyNodesSince": {n: format_time(ADDED) for n in known}}
    obs = on_node_1(fault_entry("Ascend910-3", "SeparateNPU", at=NOW - timedelta(seconds=1)))
    st = restarted(run(job(status), gang(running_on_node_1()), obs))
    assert st.faulty_nodes == (*known[1:], "node-1")
    assert st.faulty_nodes_since == {**{n: format_time(ADDED) for n in known[1:]}, "node-1": format_time(NOW)}


def test_policy_fields_and_their_defaults() -> None:
    defaults = parse_failure_policy({})
    assert (defaults.device_fault_window, defaults.faulty_node_ttl) == (60.0, 3600.0)
    given = parse_failure_policy({"deviceFaultWindowSeconds": 15, "faultyNodeTTLSeconds": 0})
    assert (given.device_fault_window, given.faulty_node_ttl) == (15.0, 0.0)


def test_status_reads_leniently() -> None:
    st = parse_status(
        {"faultyNodes": ["a", "b"], "faultyNodesSince": {"a": "2026-11-23T12:00:00Z", "b": 5, 3: "x"}}
    )
    assert st.faulty_nodes == ("a", "b") and st.faulty_nodes_since == {"a": "2026-11-23T12:00:00Z"}
    assert parse_status({"faultyNodesSince": ["a"]}).faulty_nodes_since == {}
    odd = parse_status({"lastFailure": {"time": "t", "chips": "Ascend910-1"}}).last_failure
    assert odd is not None and odd.chips is None
