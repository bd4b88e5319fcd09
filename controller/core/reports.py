"""What the trainers reported on their pods (respawn_protocol/report.py), summed up for one job.

The last step complete on every rank is the oldest of the ranks' newest commits: the ranks save
at the same steps, so a step every rank has committed is one the trainer's resolver can resume
from. Each rank's newest commit is taken over every pod of the job still present (a dying attempt
may commit its final step after the next attempt's pods exist); progress and start-up timings
count only for the current attempt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.api.store import MAX_ERROR, StoreStatus
from controller.api.types import CheckpointRef, ProgressRef, StartupTimes
from controller.core.pods import Pod, attempt_of
from controller.core.timefmt import parse_time
from respawn_protocol.report import Commit, Report, reports_of


@dataclass(frozen=True)
class Summary:
    seen: bool = False  # any pod of the job carries a report
    checkpoint: CheckpointRef | None = None
    progress: ProgressRef | None = None  # rank 0's, current attempt
    startup: StartupTimes | None = None  # current attempt, once every rank reported it
    step_time: float | None = None  # rank 0's, current attempt
    save_cost: float | None = None  # rank 0's seconds stood still per save, current attempt
    store: StoreStatus | None = None  # the current attempt's uploads (spec.checkpointStore)


def _commit_order(c: Commit) -> tuple[int, int]:
    return (c.attempt if c.attempt is not None else -1, c.step)


def _complete(commits: dict[int, Commit], world_size: int, attempt: int) -> CheckpointRef | None:
    """Until the current gang has committed, the newest commits are an earlier gang's, whose size
    may differ (a resize): every rank that gang reported must be there, not only the new gang's."""
    if commits and max(_commit_order(c)[0] for c in commits.values()) != attempt:
        world_size = max(world_size, 1 + max(commits))
    if world_size < 1 or not set(range(world_size)) <= set(commits):
        return None
    commits = {r: c for r, c in commits.items() if r < world_size}
    oldest = min(commits.values(), key=lambda c: c.step)
    times = [c.at for c in commits.values() if c.step == oldest.step and c.at]
    return CheckpointRef(
        step=oldest.step,
        epoch=oldest.epoch,
        file=oldest.file,
        time=max(times) if times else None,
        attempt=oldest.attempt,
    )


def _startup(reports: list[Report], world_size: int, attempt: int) -> StartupTimes | None:
    timed = {r.rank: r for r in reports if r.startup}
    if world_size < 1 or set(timed) != set(range(world_size)):
        return None
    phases = {phase for r in timed.values() for phase in r.startup}
    return StartupTimes(
        attempt,
        {p: max(r.startup.get(p, 0.0) for r in timed.values()) for p in sorted(phases)},
        _latest(r.started_at for r in timed.values()),
        _latest(r.ready_at for r in timed.values()),
        _agreed(r.resumed_from for r in timed.values()),
    )


def _uploads(reports: list[Report], world_size: int) -> StoreStatus | None:
    """The gang's uploads: the newest step every rank has in the store (ranks save at the same
    steps), and the worst of the ranks' backlogs and failures."""
    ups = {r.rank: r.upload for r in reports if r.upload is not None}
    if not ups:
        return None
    steps = [ups[r].step if r in ups else None for r in range(world_size)]
    failing = [u for _, u in sorted(ups.items()) if u.failures]
    return StoreStatus(
        step=None if None in steps else min(s for s in steps if s is not None),
        pending=max(u.pending for u in ups.values()),
        # As status holds them, so an unchanged report is no status write.
        lag_seconds=round(max(u.lag_seconds for u in ups.values()), 1),
        failures=max(u.failures for u in ups.values()),
        error=failing[0].error[:MAX_ERROR] if failing and failing[0].error else None,
    )


def _agreed(steps: Iterable[int | None]) -> int | None:
    """The step every rank resumed (a gang resumes one step); None if any did not say or they differ."""
    found = set(steps)
    return found.pop() if len(found) == 1 and None not in found else None


def _latest(times: Iterable[str | None]) -> str | None:
    """The latest of the ranks' wall-clock times; None unless every rank gave one."""
    latest: tuple[datetime, str] | None = None
    for text in times:
        if text is None or (at := parse_time(text)) is None:
            return None
        latest = max(latest, (at, text)) if latest else (at, text)
    return latest[1] if latest else None


def summarize(pods: Sequence[Pod], *, world_size: int, attempt: int) -> Summary:
    commits: dict[int, Commit] = {}
    current: list[Report] = []
    seen = False
    for pod in pods:
        pod_attempt = attempt_of(pod)
        for report in reports_of((pod.get("metadata") or {}).get("annotations")):
            seen = True
            if (c := report.commit) is not None and (
                report.rank not in commits or _commit_order(c) > _commit_order(commits[report.rank])
            ):
                commits[report.rank] = c
            if report.rank < world_size and pod_attempt == attempt and report.attempt in (None, attempt):
                current.append(report)
    rank0 = next((r for r in current if r.rank == 0 and r.step is not None and r.at), None)
    progress = (
        ProgressRef(rank0.step, rank0.at, attempt) if rank0 and rank0.step is not None and rank0.at else None
    )
    return Summary(
        seen,
        _complete(commits, world_size, attempt),
        progress,
        _startup(current, world_size, attempt),
        step_time=rank0.step_time if rank0 else None,
        save_cost=rank0.save_cost if rank0 else None,
        store=_uploads(current, world_size),
    )
