"""Table tests of what the trainers' pod reports add up to (controller/core/reports.py), and of the
progress policy applying them (no shared volume anywhere)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.api.store import StoreStatus
from controller.api.types import CheckpointRef, ProgressRef, StartupTimes, parse_status, status_to_dict
from controller.core import reports
from controller.core.observations import Observations
from controller.core.policy import progress
from controller.core.timefmt import format_time, parse_time
from respawn_protocol.report import Report, Upload, annotation_key, decode
from tests.support.core_inputs import job, pod, run

AT = "2026-11-23T11:59:00.000Z"
AT_TIME = datetime(2026, 11, 23, 11, 59, tzinfo=UTC)


def commit(step: int, attempt: int = 0, at: str = AT) -> dict[str, Any]:
    return {"step": step, "epoch": 1, "file": f"llm_rank_0-1_{step}.ckpt", "attempt": attempt, "at": at}


def reported(rank: int, attempt: int = 0, **report: Any) -> dict[str, Any]:
    body = pod(rank, attempt=attempt)
    value = json.dumps({"attempt": attempt, **report})
    body["metadata"]["annotations"] = {annotation_key(rank): value}
    return body


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        pytest.param([pod(0), pod(1)], None, id="nothing reported"),
        pytest.param([reported(0, commit=commit(20)), pod(1)], None, id="one rank has not committed"),
        pytest.param(
            [reported(0, commit=commit(30)), reported(1, commit=commit(20))],
            CheckpointRef(20, 1, "llm_rank_0-1_20.ckpt", AT, 0),
            id="the oldest of the ranks' newest commits",
        ),
        pytest.param(
            [
                reported(0, commit=commit(20)),
                reported(1, commit=commit(10)),
                reported(1, 1, commit=commit(25, 1)),
            ],
            CheckpointRef(20, 1, "llm_rank_0-1_20.ckpt", AT, 0),
            id="a dying attempt's commit and the next attempt's count together",
        ),
        pytest.param(
            [
                reported(0, commit=commit(30, 0)),
                reported(0, 1, commit=commit(10, 1)),
                reported(1, 1, commit=commit(10, 1)),
            ],
            CheckpointRef(10, 1, "llm_rank_0-1_10.ckpt", AT, 1),
            id="a newer attempt's commit wins over a higher older step (resumed further back)",
        ),
        pytest.param(
            [
                reported(0, 1, commit=commit(20, 1)),
                reported(1, 1, commit=commit(20, 1)),
                reported(5, commit=commit(1)),
            ],
            CheckpointRef(20, 1, "llm_rank_0-1_20.ckpt", AT, 1),
            id="once the gang has committed, a rank beyond its size is ignored",
        ),
    ],
)
def test_last_complete_checkpoint(pods: list[dict[str, Any]], expected: CheckpointRef | None) -> None:
    assert reports.summarize(pods, world_size=2, attempt=1).checkpoint == expected


def test_after_a_shrink_the_old_gang_s_ranks_count_until_the_new_gang_commits() -> None:
    """2 ranks -> 1: rank 0 committed step 7 as its peer died having committed only 6. Until the
    1-rank gang commits, step 7 is not complete: the old gang had two ranks."""
    old_gang = [reported(0, commit=commit(7)), reported(1, commit=commit(6))]
    assert reports.summarize(old_gang, world_size=1, attempt=1).checkpoint == CheckpointRef(
        6, 1, "llm_rank_0-1_6.ckpt", AT, 0
    )
    committed = [reported(0, 1, commit=commit(13, 1)), reported(1, commit=commit(6))]
    checkpoint = reports.summarize(committed, world_size=1, attempt=1).checkpoint
    assert checkpoint is not None and checkpoint.step == 13, "the new gang's own commit"


def test_progress_and_startup_count_only_for_the_current_attempt() -> None:
    timings = {"import": 4.0, "load": 0.5, "compile": 2.0, "firstStep": 2.4}
    pods = [
        reported(0, 0, step=90, stepTime=0.3, at="2026-11-23T11:00:00Z", startup=timings),
        reported(0, 1, step=12, stepTime=0.3, at=AT, startup=timings),
        reported(1, 1, startup={**timings, "import": 6.5}),
    ]
    summary = reports.summarize(pods, world_size=2, attempt=1)
    assert summary.seen
    assert summary.progress == ProgressRef(12, AT, 1)
    assert summary.startup == StartupTimes(1, {**timings, "import": 6.5}), "the slowest rank's"
    only_one = reports.summarize(pods[:2], world_size=2, attempt=1)
    assert only_one.startup is None, "until every rank has reported its start-up"


@pytest.mark.parametrize(
    "value",
    ["{", "[]", '{"commit": {"step": -1}}', '{"step": "7"}', "x" * 5000, '{"startup": {"import": "nan"}}'],
)
def test_malformed_reports_are_ignored(value: str) -> None:
    body = pod(0)
    body["metadata"]["annotations"] = {annotation_key(0): value, annotation_key(1): value}
    summary = reports.summarize([body], world_size=2, attempt=0)
    assert summary.checkpoint is None and summary.progress is None and summary.startup is None


def test_the_policy_applies_reports_and_never_moves_the_checkpoint_back() -> None:
    status = parse_status(
        {"phase": "Running", "attempt": 1, "lastCompleteCheckpoint": {"step": 40, "attempt": 1}}
    )
    newer = reports.Summary(True, CheckpointRef(50, attempt=1), ProgressRef(55, AT, 1))
    applied, obs = progress.observe(status, Observations(), newer)
    assert applied.last_complete_checkpoint == CheckpointRef(50, attempt=1) and obs.checkpoint is not None
    assert applied.last_progress == ProgressRef(55, AT, 1)
    assert obs.progress_tracked and obs.last_step == 55 and obs.last_progress is not None

    older = reports.Summary(True, CheckpointRef(30, attempt=1))
    kept, obs = progress.observe(status, Observations(), older)
    assert kept.last_complete_checkpoint == status.last_complete_checkpoint and obs.checkpoint is None


def test_a_job_whose_trainers_never_reported_is_not_judged_for_hangs() -> None:
    status = parse_status({"phase": "Running", "attempt": 0})
    _, obs = progress.observe(status, Observations(), reports.Summary())
    assert not obs.progress_tracked
    earlier = parse_status(
        {"phase": "Running", "attempt": 2, "lastProgress": {"step": 9, "time": AT, "attempt": 1}}
    )
    _, obs = progress.observe(earlier, Observations(), reports.Summary())
    assert obs.progress_tracked, "reports seen before: a silent new attempt is judged"
    assert obs.last_progress is None, "an earlier attempt's progress never counts for this one"


@pytest.mark.parametrize(
    ("seconds_later", "attempt", "written"),
    [(60, 1, False), (299, 1, False), (300, 1, True), (10, 2, True)],
)
def test_heartbeats_reach_the_status_only_every_few_minutes(
    seconds_later: int, attempt: int, written: bool
) -> None:
    """Each heartbeat would otherwise cost a status write; the hang clock reads the report itself."""
    base = parse_status(
        {"phase": "Running", "attempt": attempt, "lastProgress": {"step": 5, "time": AT, "attempt": 1}}
    )
    new_time = format_time(AT_TIME + timedelta(seconds=seconds_later))
    new = ProgressRef(9, new_time, attempt)
    applied, obs = progress.observe(base, Observations(), reports.Summary(True, progress=new))
    assert (applied.last_progress == new) is written
    assert obs.last_step == 9 and obs.last_progress == parse_time(new_time), (
        "the hang clock sees every report"
    )


def test_a_final_commit_reported_moments_before_the_pod_was_deleted_still_counts() -> None:
    """An evicted gang commits its last step and its pods are gone before the next pass; the
    informer's final state of each (Observations.departed) still carries the reports."""
    body = job({"phase": "Restarting", "attempt": 1, "replicas": 2, "lastCompleteCheckpoint": {"step": 10}})
    gone = [reported(r, 0, commit=commit(37)) for r in (0, 1)]
    stranger = reported(1, 0, commit=commit(5, attempt=3))  # would win rank 1 if it were the job's
    stranger["metadata"]["ownerReferences"] = [{"controller": True, "uid": "another-job"}]
    plan = run(body, [], Observations(departed=[*gone, stranger]))
    assert plan.status is not None and plan.status.last_complete_checkpoint is not None
    assert plan.status.last_complete_checkpoint.step == 37, "another job's pod is not this job's report"


def test_the_step_the_trainers_resumed_replaces_the_prediction_made_at_the_restart() -> None:
    """At the restart the controller predicts the resume step from the reports it has; a SIGKILL
    can take a rank's last commit report with it. The new gang's start-up report says what it did
    resume, and status follows it, once, with no write after that."""
    timings = {"import": 1.0, "firstStep": 0.5}
    body = job({"phase": "Running", "attempt": 1, "replicas": 2, "resumedFromStep": 10})
    pods = [reported(r, 1, startup={**timings, "resumedFrom": 11}) for r in (0, 1)]
    plan = run(body, pods)
    assert plan.status is not None and plan.status.resumed_from_step == 11
    again = run(job(status_to_dict(plan.status)), pods)
    assert again.status is None, "the applied report round-trips through status: no write per pass"
    split = [reported(0, 1, startup={**timings, "resumedFrom": 11}), reported(1, 1, startup=timings)]
    unsure = run(body, split).status
    assert unsure is not None and unsure.resumed_from_step == 10, "only what every rank says"


def test_an_upload_report_round_trips_and_a_malformed_one_is_read_as_far_as_it_is_well_formed() -> None:
    sent = Report(
        rank=1, attempt=2, upload=Upload(step=40, pending=1, lag_seconds=2.5, failures=3, error="x" * 300)
    )
    got = decode(1, sent.encode())
    assert got is not None and got.upload == Upload(40, 1, 2.5, 3, "x" * 200)
    odd = decode(
        0, json.dumps({"attempt": 0, "upload": {"step": -1, "pending": "2", "lagSeconds": float("nan")}})
    )
    assert odd is not None and odd.upload == Upload(None, 0, 0.0, 0, None)
    assert decode(0, json.dumps({"attempt": 0})).upload is None  # type: ignore[union-attr]


def upload(
    step: int | None, pending: int = 0, lag: float = 0.0, failures: int = 0, error: str | None = None
) -> Any:
    return {"step": step, "pending": pending, "lagSeconds": lag, "failures": failures, "error": error}


def test_the_gang_s_uploads_go_to_status_once_with_one_warning_when_they_start_failing() -> None:
    store = {"endpoint": "http://s3:8333", "bucket": "ckpt", "credentialsSecret": "keys"}
    body = job({"phase": "Running", "attempt": 1, "replicas": 2}, checkpointStore=store)
    behind = [reported(0, 1, upload=upload(40, 1, 2.345)), reported(1, 1, upload=upload(30, 2, 7.04))]
    plan = run(body, [*behind, reported(0, 0, upload=upload(90, 9, 99.0, 5, "old attempt"))])
    assert plan.status is not None
    assert plan.status.checkpoint_store == StoreStatus(30, 2, 7.0, 0, None), (
        "the gang's newest, worst backlog"
    )
    assert plan.events == []
    again = run(job(status_to_dict(plan.status), checkpointStore=store), behind)
    assert again.status is None, "an unchanged report round-trips through status: no write per pass"

    long_error = "AccessDenied: " + "x" * 400
    failing = [reported(0, 1, upload=upload(40)), reported(1, 1, upload=upload(30, 3, 12.0, 2, long_error))]
    failed = run(job(status_to_dict(plan.status), checkpointStore=store), failing)
    assert failed.status is not None and failed.status.checkpoint_store is not None
    assert failed.status.checkpoint_store.error == long_error[:200]
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "CheckpointUploadFailing")]
    assert "AccessDenied" in failed.events[0].message
    still = run(job(status_to_dict(failed.status), checkpointStore=store), failing)
    assert still.status is None and still.events == [], "one warning, not one per pass or failed try"
    one_rank = run(body, [reported(0, 1, upload=upload(40))]).status
    assert one_rank is not None and one_rank.checkpoint_store == StoreStatus(None, 0, 0.0, 0, None)
