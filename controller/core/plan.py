"""What one reconcile pass wants done: the output of `decide`, the input of `apply`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.api.types import JobStatus


@dataclass(frozen=True)
class PodDeletion:
    name: str
    # Pods on a lost node never finish terminating: no kubelet is left to confirm.
    force: bool = False


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class Restart:
    """A restart decided in this pass, for metrics."""

    reason: str
    counted: bool
    steps_lost: int | None


@dataclass
class Plan:
    ensure_service: dict[str, Any] | None = None
    create_pods: list[dict[str, Any]] = field(default_factory=list)
    delete_pods: list[PodDeletion] = field(default_factory=list)
    status: JobStatus | None = None
    # A restart is recorded in status before the old attempt is deleted, so a controller that
    # dies in between resumes the same restart instead of losing or double-counting it.
    status_first: bool = False
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    restart: Restart | None = None
    recovered_after: float | None = None  # seconds from failure seen to all workers running

    @property
    def empty(self) -> bool:
        return not (self.ensure_service or self.create_pods or self.delete_pods or self.status or self.events)
