"""When an attempt has ended, and when the job has succeeded: every worker exited 0."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from controller.api.constants import Phase
from controller.api.types import JobStatus
from controller.core.context import Context, Transition
from controller.core.plan import EmitEvent
from controller.core.pods import Pod, phase_of
from controller.core.policy import conditions
from controller.core.timefmt import format_time


def all_succeeded(pods: Sequence[Pod]) -> bool:
    return bool(pods) and all(phase_of(p) == "Succeeded" for p in pods)


def attempt_ending(pods: Sequence[Pod]) -> bool:
    """A pod failed or every pod succeeded. Not one rank done ahead of the others: that can last
    the whole run."""
    return any(phase_of(p) == "Failed" for p in pods) or all_succeeded(pods)


def succeed(ctx: Context, status: JobStatus) -> Transition | None:
    """The job succeeded when every worker of the current attempt did; None while any has not."""
    if not all_succeeded(ctx.current):
        return None
    workers = len(ctx.current)
    done = dataclasses.replace(
        status,
        phase=Phase.SUCCEEDED,
        completion_time=format_time(ctx.now),
        conditions=conditions.succeeded(status.conditions, workers, ctx.now),
    )
    return Transition(done, notices=(EmitEvent("Normal", "Succeeded", f"all {workers} workers completed"),))
