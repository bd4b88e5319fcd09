"""Table tests of the progress policy: checkpoints seen, and hangs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controller.api.constants import Reason
from controller.api.types import CheckpointRef
from controller.core import reports
from controller.core.observations import Observations
from controller.core.policy import progress
from controller.core.timefmt import format_time
from tests.support.core_inputs import NOW, RUNNING, context, job, pod

TIMEOUT = {"progressTimeoutSeconds": 300}  # and the default progressGraceSeconds: 300


def running_for(seconds: int, **status: Any) -> dict[str, Any]:
    return {**RUNNING, "runningSince": format_time(NOW - timedelta(seconds=seconds)), **status}


def seen(seconds_ago: int | None, tracked: bool = True) -> Observations:
    last = NOW - timedelta(seconds=seconds_ago) if seconds_ago is not None else None
    return Observations(progress_tracked=tracked, last_progress=last)


@pytest.mark.parametrize(
    ("status", "policy", "obs", "remaining", "hung"),
    [
        (running_for(600), TIMEOUT, seen(30), 270.0, 0),
        (running_for(600), TIMEOUT, seen(300), 0.0, 1),
        (running_for(600), TIMEOUT, seen(301), -1.0, 1),
        # No progress yet: the start-up grace comes on top of the timeout.
        (running_for(400), TIMEOUT, seen(None), 200.0, 0),
        (running_for(600), TIMEOUT, seen(None), 0.0, 1),
        (running_for(601), TIMEOUT, seen(None), -1.0, 1),
        (running_for(601), {**TIMEOUT, "progressGraceSeconds": 0}, seen(None), -301.0, 1),
        # An earlier attempt's progress never counts for this one (the restart loop of issue 12).
        (running_for(60), TIMEOUT, seen(900), 540.0, 0),
        (running_for(600), TIMEOUT, seen(301, tracked=False), None, 0),  # no observer, no hang verdict
        (running_for(600), {}, seen(301), None, 0),  # not asked for
        (RUNNING, TIMEOUT, seen(301), None, 0),  # not running yet: start-up is not a hang
        ({**running_for(600), "phase": "Pending"}, TIMEOUT, seen(301), -1.0, 0),
    ],
)
def test_hang(
    status: dict[str, Any], policy: dict[str, Any], obs: Observations, remaining: float | None, hung: int
) -> None:
    ctx, st = context(job(status, failurePolicy=policy), [pod(0), pod(1)], obs)
    assert progress.hang_in(ctx, st) == remaining
    found = progress.hang(ctx, st)
    assert (found is not None) is bool(hung)
    if found is not None:
        assert (found.reason, found.message) == (Reason.PROGRESS_TIMEOUT, "no progress for 300s")


def test_the_last_complete_checkpoint_is_recorded() -> None:
    _, status = context(job(RUNNING))
    ref = CheckpointRef(step=40, epoch=1, file="a.ckpt")
    summary = reports.Summary()
    assert progress.observe(status, Observations(checkpoint=ref), summary)[0].last_complete_checkpoint == ref
    assert progress.observe(status, Observations(), summary)[0] == status
