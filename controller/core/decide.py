"""The pure decision core: (job, pods, observations, now) -> Plan. The only place that decides.

A restart is state, not an action: it bumps `status.attempt`, and every later pass deletes pods
of older attempts, waits until they are gone, waits out the backoff, then creates the new
attempt. Each pass reads only its inputs, so the same inputs always give the same plan. The
policies (`controller.core.policy`) each decide one concern; this module routes a pass to them
by phase and orders what they decided into steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from controller.api.constants import Phase, Reason
from controller.api.types import JobStatus, TrainingJob, parse_status
from controller.core import inplace, pods, reports
from controller.core.context import Context, Transition
from controller.core.observations import Observations
from controller.core.plan import DeleteJob, EmitEvent, Plan, Step, WriteStatus
from controller.core.policy import (
    conditions,
    devices,
    failures,
    interval,
    progress,
    recovery,
    restart,
    startup,
    success,
    suspend,
)
from controller.core.timefmt import parse_time


def decide(job: TrainingJob, pod_list: Sequence[pods.Pod], obs: Observations, now: datetime) -> Plan:
    if job.deleting:
        return Plan()
    status = dataclasses.replace(
        job.status,
        observed_generation=job.generation,
        conditions=conditions.reconciled(job.status.conditions, now),
    )
    owned = [p for p in pod_list if pods.owned_by(p, job.uid)]
    status, abandoned = _in_place_or_not(job, obs, now, status, owned)
    owned = [inplace.project(p, status, job.spec.trainer_container) for p in owned]
    ranks = (status.replicas or job.spec.replicas) * (status.ranks_per_pod or job.spec.ranks_per_pod)
    gone = [
        inplace.project(p, status, job.spec.trainer_container)
        for p in obs.departed
        if pods.owned_by(p, job.uid)
    ]
    summary = reports.summarize([*owned, *gone], world_size=ranks, attempt=status.attempt)
    status, obs = progress.observe(status, obs, summary)
    status, recovered = recovery.complete(status)
    recovered += progress.upload_notices(job.status.checkpoint_store, status.checkpoint_store)
    status = restart.refund(status, obs)
    current, older = pods.split_attempts(owned, status.attempt)
    ctx = Context(job, obs, now, current, older)
    status = interval.suggest(ctx, status, summary)
    # Device faults reported after the fact: faulty nodes usable again, a counted exit converted.
    status, converted = restart.reattribute(ctx, devices.forget(ctx, status))
    cleanup = _cleanup(status, older, obs)

    if status.phase.terminal:
        teardown = pods.deletions(current, obs) if status.phase is Phase.FAILED else []
        transition = _expire(ctx, status, Transition(status, changes=tuple(teardown)))
    elif job.spec.suspend:
        transition = suspend.suspend(ctx, status)
    elif status.phase is Phase.SUSPENDED:
        transition = suspend.resume(ctx, status)
    elif status.phase is Phase.RESTARTING:
        transition = startup.continue_restart(ctx, status)
    elif status.replicas is None:
        transition = startup.create_attempt(ctx, status)
    else:
        transition = _watch_attempt(ctx, status)
    if converted or recovered or abandoned:
        notices = abandoned + converted + recovered + transition.notices
        transition = dataclasses.replace(transition, notices=notices)
    return _ordered(job.status, cleanup, transition)


def decide_invalid(raw_status: Mapping[str, Any], message: str, now: datetime) -> Plan:
    """An unusable spec fails the job once with a clear condition; it is not retried."""
    status = parse_status(dict(raw_status))
    if status.phase is Phase.FAILED:
        return Plan()
    failed = dataclasses.replace(
        status, phase=Phase.FAILED, conditions=conditions.invalid(status.conditions, message, now)
    )
    return Plan((WriteStatus(failed), EmitEvent("Warning", Reason.INVALID_SPEC.value, message)))


def decide_error(raw_status: Mapping[str, Any], reason: str, message: str, now: datetime) -> Plan:
    """A pass that could not carry out its plan: say why on the job, as a condition and a Warning
    event. The pass is retried with backoff; the next one that succeeds clears the condition."""
    status = parse_status(dict(raw_status))
    marked = dataclasses.replace(
        status, conditions=conditions.reconcile_error(status.conditions, reason, message, now)
    )
    write: tuple[Step, ...] = (WriteStatus(marked),) if marked != status else ()
    return Plan((*write, EmitEvent("Warning", reason, message)))


def _in_place_or_not(
    job: TrainingJob, obs: Observations, now: datetime, status: JobStatus, owned: Sequence[pods.Pod]
) -> tuple[JobStatus, tuple[Step, ...]]:
    """An in-place restart whose gang cannot run the next attempt (a pod failed, left or lost its
    node before the start) recreates the gang instead."""
    why = inplace.broken(Context(job, obs, now), status, owned)
    if why is None:
        return status, ()
    event = EmitEvent(
        "Warning", "InPlaceRestartAbandoned", f"attempt {status.attempt}: {why}; recreating the pods"
    )
    return dataclasses.replace(status, pod_attempt=None), (event,)


def _cleanup(status: JobStatus, older: Sequence[pods.Pod], obs: Observations) -> tuple[Step, ...]:
    """Pods of earlier attempts go; those an in-place restart keeps only stop their trainers."""
    if status.phase.terminal:
        return tuple(pods.deletions(older, obs))
    kept = [p for p in older if inplace.held(p, status)]
    gone = [p for p in older if not inplace.held(p, status)]
    return inplace.stop(kept, status.attempt) + tuple(pods.deletions(gone, obs))


def _expire(ctx: Context, status: JobStatus, transition: Transition) -> Transition:
    """A finished job past ttlSecondsAfterFinished is deleted; before that, looked at again then."""
    ttl, done = ctx.job.spec.ttl_after_finished, parse_time(status.completion_time)
    if ttl is None or done is None:
        return transition
    left = (done - ctx.now).total_seconds() + ttl
    if left > 0:
        return dataclasses.replace(transition, requeue_after=left)
    return dataclasses.replace(transition, changes=(*transition.changes, DeleteJob(ctx.job.uid)))


def _watch_attempt(ctx: Context, status: JobStatus) -> Transition:
    cause = (
        failures.root_cause(failures.find(ctx, status))
        or progress.hang(ctx, status)
        or startup.not_started(ctx, status)
    )
    if cause is not None:
        return restart.fail_attempt(ctx, status, failures.classify(cause, ctx.policy))
    transition = (
        success.succeed(ctx, status)
        or startup.running(ctx, status)
        or startup.waiting(ctx, status)
        or Transition(status)
    )
    return dataclasses.replace(transition, requeue_after=_next_deadline(ctx, status))


def _next_deadline(ctx: Context, status: JobStatus) -> float | None:
    """Seconds until a timeout could fire with no further event: a NotReady node, a hang, or a
    gang not started in time."""
    waits = [lost[0] for pod in ctx.current if (lost := failures.node_lost_in(pod, ctx)) is not None]
    if (hang := progress.hang_in(ctx, status)) is not None:
        waits.append(hang)
    if (start := startup.startup_timeout_in(ctx, status)) is not None:
        waits.append(start)
    return max(0.0, min(waits)) if waits else None


def _ordered(before: JobStatus, cleanup: tuple[Step, ...], transition: Transition) -> Plan:
    """Steps in the order they must happen; the status is written only when it changed."""
    write: tuple[Step, ...] = (WriteStatus(transition.status),) if transition.status != before else ()
    if transition.record_first:
        steps = write + cleanup + transition.changes + transition.notices
    else:
        steps = cleanup + transition.changes + write + transition.notices
    return Plan(steps, transition.requeue_after)
