"""Restarting the whole gang: the budget, the backoff, the refund, and when the job fails instead.

A restart is state, not an action: it bumps `status.attempt` and clears `status.replicas`; the
startup policy creates the next attempt once the old one is gone and the backoff has passed.
Counted restarts use the budget; progress of the new attempt (a checkpoint newer than the one it
resumed from) gives one back and resets the backoff. A counted exit whose device fault is
reported only after its restart was recorded is converted to that fault's (`reattribute`).

Bounds the job's own policy cannot lift (a restart creates and deletes every pod of the gang, so a
loop of them is load on the API server that every tenant shares): no restart sooner than
BACKOFF_FLOOR after the failure, even with `initialSeconds: 0`; and a run of RAPID_FREE rapid
restarts (attempts that failed less than RAPID_WINDOW after they were created, counted or not, a
refund notwithstanding) is followed by the controller's own doubling backoff, RAPID_INITIAL up to
RAPID_MAX, until an attempt lives through RAPID_WINDOW.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from controller.api.constants import Action, Phase, Reason
from controller.api.types import FailurePolicy, FailureRecord, JobStatus
from controller.core import inplace, pods
from controller.core.context import Context, Transition
from controller.core.devicefaults import FaultClass
from controller.core.observations import Observations
from controller.core.plan import EmitEvent, RecordRestart, Step
from controller.core.policy import conditions, devices
from controller.core.policy.failures import Failure, Verdict, classify
from controller.core.timefmt import format_time, parse_time

MAX_FAULTY_NODES = 16
BACKOFF_FLOOR = 1.0  # seconds between a failure and the next attempt, at least
RAPID_WINDOW = 600.0  # an attempt that fails sooner than this after it was created restarts rapidly
RAPID_FREE = 5  # rapid restarts in a row with the job's own backoff only
RAPID_INITIAL = 10.0  # then the controller's: 10 s, 20 s, ... up to RAPID_MAX
RAPID_MAX = 600.0


def backoff_seconds(consecutive_failures: int, *, initial: float, maximum: float) -> float:
    if consecutive_failures <= 0 or initial <= 0:
        return 0.0
    return min(initial * 2 ** (consecutive_failures - 1), maximum)


def rapid_restarts(status: JobStatus, now: datetime) -> int:
    """The run of rapid restarts this restart makes: 0 when the failing attempt lived through
    RAPID_WINDOW, else one more than before (an attempt of unknown age counts as rapid)."""
    created = parse_time(status.attempt_created_at)
    if created is not None and (now - created).total_seconds() >= RAPID_WINDOW:
        return 0
    return status.rapid_restarts + 1


def restart_delay(consecutive: int, rapid: int, policy: FailurePolicy) -> float:
    """Seconds from the failure to the next attempt: the job's backoff, the floor, and past
    RAPID_FREE rapid restarts the controller's own backoff, whichever is longest."""
    own = backoff_seconds(consecutive, initial=policy.backoff_initial, maximum=policy.backoff_max)
    storm = backoff_seconds(rapid - RAPID_FREE, initial=RAPID_INITIAL, maximum=RAPID_MAX)
    return max(BACKOFF_FLOOR, own, storm)


def refund(status: JobStatus, obs: Observations) -> JobStatus:
    """Progress after a restart gives back one restart of the budget and resets the backoff.

    Only the current attempt's own commit counts: the dying attempt may still commit while it goes.
    meta.json records which attempt wrote a step; where it does not (directories written outside
    respawn), a step newer than the one at the restart stands in for it."""
    ckpt = obs.checkpoint
    if ckpt is None:
        return status
    baseline = status.checkpoint_step_at_restart
    if ckpt.attempt is not None:
        ours = ckpt.attempt == status.attempt
    else:
        ours = baseline is None or ckpt.step > baseline
    running = status.phase in (Phase.PENDING, Phase.RUNNING)
    if running and status.consecutive_failures and ours:
        return dataclasses.replace(
            status,
            budget_used=max(0, status.budget_used - 1),
            consecutive_failures=0,
            checkpoint_step_at_restart=None,
        )
    return status


def within_budget(verdict: Verdict, status: JobStatus, policy: FailurePolicy) -> Verdict:
    """A counted restart beyond the budget fails the job instead."""
    if verdict.action is Action.RESTART_JOB and status.budget_used >= policy.max_restarts:
        return dataclasses.replace(verdict, action=Action.FAIL_JOB, exhausted_budget=policy.max_restarts)
    return verdict


def fail_attempt(ctx: Context, status: JobStatus, verdict: Verdict) -> Transition:
    """End the current attempt: restart the job, or fail it. Recorded before anything is deleted."""
    verdict = within_budget(verdict, status, ctx.policy)
    f = verdict.failure
    record = FailureRecord(
        time=format_time(f.at),
        reason=f.reason.value,
        action=verdict.action.value,
        message=verdict.message,
        pod=f.pod,
        node=f.node,
        exit_code=f.exit_code,
        counted=verdict.counted,
        chips=tuple(sorted(f.chips)) if f.chips is not None else None,
    )
    teardown = tuple(pods.deletions(ctx.current, ctx.obs))
    if verdict.action is Action.FAIL_JOB:
        failed = dataclasses.replace(
            status,
            phase=Phase.FAILED,
            last_failure=record,
            completion_time=format_time(ctx.now),
            conditions=conditions.failed(status.conditions, verdict.reason, verdict.message, ctx.now),
        )
        event = EmitEvent("Warning", "JobFailed", verdict.message)
        return Transition(failed, changes=teardown, notices=(event,), record_first=True)
    return _restart(ctx, dataclasses.replace(status, last_failure=record), verdict, teardown)


def _restart(ctx: Context, status: JobStatus, verdict: Verdict, teardown: tuple[Step, ...]) -> Transition:
    f, policy, counted = verdict.failure, ctx.policy, verdict.counted
    consecutive, rapid = status.consecutive_failures + 1, rapid_restarts(status, ctx.now)
    delay = restart_delay(consecutive, rapid, policy)
    if verdict.faulty_node and policy.avoid_faulty_nodes:
        status = devices.avoid(status, verdict.faulty_node, ctx.now, MAX_FAULTY_NODES)
    step = ctx.obs.checkpoint.step if ctx.obs.checkpoint else None
    last = ctx.obs.last_step
    steps_lost = last - step if last is not None and step is not None else None
    kind = "counted" if counted else "not counted"
    # Process failures on healthy nodes keep the pods (core/inplace.py): the supervisors stop and
    # start the trainers; the pods' attempt is the one that created them.
    in_place = inplace.eligible(ctx, status, verdict)
    if in_place:
        teardown = inplace.stop(ctx.current, status.attempt + 1)
        kind += ", in place"
    pod_attempt = (status.attempt if status.pod_attempt is None else status.pod_attempt) if in_place else None
    event = EmitEvent(
        "Warning",
        "Restarting",
        f"{f.reason.value} on {f.pod or 'job'}: {verdict.message}; restart {kind}, "
        f"attempt {status.attempt + 1} in {delay:.0f}s",
    )
    restarting = dataclasses.replace(
        status,
        phase=Phase.RESTARTING,
        attempt=status.attempt + 1,
        restarts=status.restarts + counted,
        uncounted_restarts=status.uncounted_restarts + (not counted),
        budget_used=status.budget_used + counted,
        consecutive_failures=consecutive,
        rapid_restarts=rapid,
        next_attempt_after=format_time(ctx.now + timedelta(seconds=delay)),
        failure_seen_at=status.failure_seen_at or format_time(ctx.now),
        checkpoint_step_at_restart=step,
        replicas=None,
        ranks_per_pod=None,
        running_since=None,
        pod_attempt=pod_attempt,
        conditions=conditions.restarting(status.conditions, f.reason.value, verdict.message, ctx.now),
    )
    return Transition(
        restarting,
        changes=teardown,
        notices=(event, RecordRestart(f.reason.value, counted, steps_lost)),
        record_first=True,
        requeue_after=delay,
    )


def reattribute(ctx: Context, status: JobStatus) -> tuple[JobStatus, tuple[Step, ...]]:
    """The last failure, a counted exit, becomes a DeviceFault when its node reports a fault on
    the worker's chips within the window of the exit only now: restarts - 1, uncountedRestarts + 1,
    the budget given back, the node avoided if the fault separates a chip. A finished job stays as
    it ended; a user rule that counts DeviceFault leaves the record alone."""
    last = status.last_failure
    if status.phase.terminal or last is None or not last.counted or last.reason != Reason.ERROR:
        return status, ()
    fault = devices.late_fault(ctx, last)
    exited = parse_time(last.time)
    if fault is None or exited is None:
        return status, ()
    message = devices.explain(last.node, fault, exited, last.message)
    failure = Failure(Reason.DEVICE_FAULT, message, exited, last.pod, last.node, last.exit_code)
    failure = dataclasses.replace(failure, keeps_node=fault.action is FaultClass.RESTART)
    verdict = classify(failure, ctx.policy)
    if verdict.action is not Action.RESTART_JOB_IGNORE_BUDGET:
        return status, ()
    record = dataclasses.replace(
        last, reason=Reason.DEVICE_FAULT.value, action=verdict.action.value, message=message, counted=False
    )
    converted = dataclasses.replace(
        status,
        restarts=max(0, status.restarts - 1),
        uncounted_restarts=status.uncounted_restarts + 1,
        budget_used=max(0, status.budget_used - 1),
        last_failure=record,
    )
    if status.phase is Phase.RESTARTING:
        reason = Reason.DEVICE_FAULT.value
        converted = dataclasses.replace(
            converted, conditions=conditions.restarting(status.conditions, reason, message, ctx.now)
        )
    if verdict.faulty_node and ctx.policy.avoid_faulty_nodes:
        converted = devices.avoid(converted, verdict.faulty_node, ctx.now, MAX_FAULTY_NODES)
    note = f"{last.pod or 'job'}: {message}; the restart after it is not counted, budget returned"
    return converted, (EmitEvent("Warning", Reason.DEVICE_FAULT.value, note),)
