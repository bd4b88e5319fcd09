"""What one reconcile pass wants done: an ordered list of steps, the output of the core and the
input of the applier, which carries them out in order and decides nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from controller.api.types import JobStatus, TrainingJob
from controller.core import podspec


@dataclass(frozen=True)
class DeletePod:
    name: str
    uid: str = ""  # delete exactly the pod decided on, never a same-named successor
    # Pods on a lost node never finish terminating: no kubelet is left to confirm.
    force: bool = False


@dataclass(frozen=True)
class AnnotatePod:
    """One annotation on one pod: the controller's word to a supervisor (respawn_protocol/inplace.py)."""

    name: str
    uid: str  # only the pod decided on
    key: str
    value: str


@dataclass(frozen=True)
class EnsureService:
    body: dict[str, Any]


@dataclass(frozen=True)
class EnsureReportAccess:
    """The ServiceAccount, Role and RoleBinding the workers report through; the Role is updated to
    name the pods of the current attempt."""

    objects: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class CreatePods:
    """One step for the gang, so the pass can expect all of its pods before deciding again. It
    names the pods (their indices) and how to build them; the applier builds each body only when
    it sends it (`body`), a batch at a time: a gang of 4,096 pods of a large template is never in
    memory at once."""

    job: TrainingJob
    attempt: int
    replicas: int
    indices: tuple[int, ...]
    avoid_nodes: tuple[str, ...] = ()
    save_steps: int | None = None  # spec.checkpointInterval: Auto, once there is a suggestion

    def body(self, index: int) -> dict[str, Any]:
        return podspec.worker_pod(
            self.job,
            attempt=self.attempt,
            rank=index,
            replicas=self.replicas,
            avoid_nodes=self.avoid_nodes,
            save_steps=self.save_steps,
        )

    def bodies(self) -> Iterator[dict[str, Any]]:
        return (self.body(i) for i in self.indices)


@dataclass(frozen=True)
class WriteStatus:
    status: JobStatus


@dataclass(frozen=True)
class EmitEvent:
    type: str  # "Normal" | "Warning"
    reason: str
    message: str


@dataclass(frozen=True)
class EnsurePodGroup:
    """The job's PodGroup (core/gang.py), created or brought up to date before its pods."""

    body: dict[str, Any]


@dataclass(frozen=True)
class DeleteJob:
    """The TrainingJob itself, finished and past its ttlSecondsAfterFinished; only this uid (a
    job re-created under the same name is left alone). Its pods and Service go with it (owners)."""

    uid: str


@dataclass(frozen=True)
class RecordRestart:
    """A restart decided in this pass, for metrics."""

    reason: str
    counted: bool
    steps_lost: int | None


@dataclass(frozen=True)
class RecordRecovery:
    seconds: float  # from the failure seen to all workers of the next attempt running


@dataclass(frozen=True)
class RecordRecoveryPhases:
    """A restart timed to the next trained step (core/policy/recovery.py), for metrics."""

    seconds: dict[str, float]  # per phase
    total: float  # the failure -> the first step of the next attempt finished


Step = (
    DeletePod
    | AnnotatePod
    | DeleteJob
    | EnsureService
    | EnsureReportAccess
    | EnsurePodGroup
    | CreatePods
    | WriteStatus
    | EmitEvent
    | RecordRestart
    | RecordRecovery
    | RecordRecoveryPhases
)
S = TypeVar(
    "S",
    DeletePod,
    AnnotatePod,
    DeleteJob,
    EnsureService,
    EnsureReportAccess,
    EnsurePodGroup,
    CreatePods,
    WriteStatus,
    EmitEvent,
    RecordRestart,
    RecordRecovery,
    RecordRecoveryPhases,
)


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...] = ()
    requeue_after: float | None = None  # look again after this many seconds without an event

    def of(self, kind: type[S]) -> list[S]:
        return [s for s in self.steps if isinstance(s, kind)]

    # Read-only views, for tests and logs.
    @property
    def status(self) -> JobStatus | None:
        writes = self.of(WriteStatus)
        return writes[-1].status if writes else None

    @property
    def create_pods(self) -> list[dict[str, Any]]:
        return [body for step in self.of(CreatePods) for body in step.bodies()]

    @property
    def delete_pods(self) -> list[DeletePod]:
        return self.of(DeletePod)

    @property
    def ensure_service(self) -> dict[str, Any] | None:
        services = self.of(EnsureService)
        return services[-1].body if services else None

    @property
    def events(self) -> list[EmitEvent]:
        return self.of(EmitEvent)

    @property
    def restart(self) -> RecordRestart | None:
        restarts = self.of(RecordRestart)
        return restarts[-1] if restarts else None
