"""Table tests of the progress policy: checkpoints seen, and hangs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from controller.api.constants import Reason
from controller.api.types import CheckpointRef
from controller.core.observations import Observations
from controller.core.policy import progress
from controller.core.timefmt import format_time
from tests.support.core_inputs import NOW, RUNNING, context, job, pod

STARTED = {**RUNNING, "startTime": format_time(NOW - timedelta(minutes=10))}
TIMEOUT = {"progressTimeoutSeconds": 300}


def seen(seconds_ago: int | None, tracked: bool = True) -> Observations:
    last = NOW - timedelta(seconds=seconds_ago) if seconds_ago is not None else None
    return Observations(progress_tracked=tracked, last_progress=last)


@pytest.mark.parametrize(
    ("status", "policy", "obs", "remaining", "hung"),
    [
        (STARTED, TIMEOUT, seen(30), 270.0, False),
        (STARTED, TIMEOUT, seen(300), 0.0, True),
        (STARTED, TIMEOUT, seen(301), -1.0, True),
        (STARTED, TIMEOUT, seen(None), -300.0, True),  # nothing since the start ten minutes ago
        (STARTED, TIMEOUT, seen(301, tracked=False), None, False),  # no observer, no hang verdict
        (STARTED, {}, seen(301), None, False),  # not asked for
        ({**STARTED, "phase": "Pending"}, TIMEOUT, seen(301), -1.0, False),  # starting is not hanging
        # The clock starts at the attempt's start when that is later than the last progress.
        (
            {**RUNNING, "startTime": format_time(NOW - timedelta(seconds=60))},
            TIMEOUT,
            seen(900),
            240.0,
            False,
        ),
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
    assert progress.observe_checkpoint(status, Observations(checkpoint=ref)).last_complete_checkpoint == ref
    assert progress.observe_checkpoint(status, Observations()) == status
