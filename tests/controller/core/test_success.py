"""Table tests of the success policy: when an attempt has ended, when the job succeeded."""

from __future__ import annotations

from typing import Any

import pytest

from controller.api.constants import Phase
from controller.core.plan import EmitEvent
from controller.core.policy import success
from tests.support.core_inputs import NOW, RUNNING, context, job, pod

DONE = pod(0, phase="Succeeded", exit_code=0)
DONE_1 = pod(1, phase="Succeeded", exit_code=0)
FAILED = pod(1, phase="Failed", exit_code=1)


@pytest.mark.parametrize(
    ("pods", "ended", "succeeded"),
    [
        ([], False, False),
        ([pod(0), pod(1)], False, False),
        ([DONE, pod(1)], False, False),  # one rank done ahead of the others: not an end
        ([DONE, DONE_1], True, True),
        ([pod(0), FAILED], True, False),
        ([DONE, FAILED], True, False),
    ],
)
def test_attempt_end(pods: list[dict[str, Any]], ended: bool, succeeded: bool) -> None:
    assert success.attempt_ending(pods) is ended
    assert success.all_succeeded(pods) is succeeded


def test_every_worker_done_succeeds_the_job() -> None:
    ctx, status = context(job(RUNNING), [DONE, DONE_1])
    t = success.succeed(ctx, status)
    assert t is not None and t.status.phase is Phase.SUCCEEDED and not t.record_first
    assert t.notices == (EmitEvent("Normal", "Succeeded", "all 2 workers completed"),)
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in t.status.conditions)
    assert t.status.completion_time is not None and t.status.completion_time.startswith(str(NOW.date()))


def test_not_done_is_no_transition() -> None:
    ctx, status = context(job(RUNNING), [DONE, pod(1)])
    assert success.succeed(ctx, status) is None
