"""The inputs of one decision, bundled so policies take one argument instead of seven."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from controller.api.types import FailurePolicy, JobStatus, TrainingJob
from controller.core.observations import Observations
from controller.core.plan import Step
from controller.core.pods import Pod


@dataclass(frozen=True)
class Context:
    job: TrainingJob
    obs: Observations
    now: datetime
    current: Sequence[Pod] = ()  # pods of the attempt in status
    older: Sequence[Pod] = ()  # pods of earlier attempts, on their way out

    @property
    def policy(self) -> FailurePolicy:
        return self.job.spec.failure_policy


@dataclass(frozen=True)
class Transition:
    """What a policy decided: the new status, the changes to pods and services that go with it, and
    the notices (events, metrics) that report it.

    `record_first` orders the status write before the changes. A restart or a failure is recorded
    before the old attempt is deleted, so a controller that dies in between resumes the same
    restart instead of losing or double-counting it. Otherwise the status records what was done,
    after it is done.
    """

    status: JobStatus
    changes: tuple[Step, ...] = ()
    notices: tuple[Step, ...] = ()
    record_first: bool = False
    requeue_after: float | None = None
