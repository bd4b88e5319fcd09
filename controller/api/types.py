"""Typed views of TrainingJob bodies.

The API server already enforces the CRD's schema and CEL rules; `parse_job` checks only what a
schema cannot (cross-field references) and raises `InvalidSpec` with a message for the user.
Status is read leniently: a status written by an older controller must never crash this one.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from controller.api import fields
from controller.api.constants import DEFAULT_MOUNT_PATH, Phase
from controller.api.failure_policy import FailurePolicy, parse_failure_policy
from controller.api.limits import check_template_size, check_world_size
from controller.api.paths import InvalidSpec, check_path, check_tenant
from controller.api.store import (
    CheckpointStore,
    StoreStatus,
    parse_store,
    parse_store_status,
    store_status_to_dict,
)
from controller.api.timings import (
    IntervalAdvice,
    Recovery,
    StartupTimes,
    interval_to_dict,
    opt_int,
    parse_interval,
    parse_recovery,
    parse_startup,
    recovery_to_dict,
    startup_to_dict,
)


@dataclass(frozen=True)
class JobSpec:
    replicas: int
    template: dict[str, Any]
    trainer_container: str
    mount_path: str
    shared_volume: dict[str, Any] | None
    output_dir: str  # relative to mount_path
    scheduler_port: int
    failure_policy: FailurePolicy
    ranks_per_pod: int = 1  # trainer processes per pod (msrun's local_worker_num)
    auto_interval: bool = False  # spec.checkpointInterval: Auto: the suggested interval is applied
    suspend: bool = False  # spec.suspend: no pods while true (Job's and Kueue's meaning)
    ttl_after_finished: int | None = None  # spec.ttlSecondsAfterFinished: delete the finished job
    pod_group: str | None = None  # spec.podGroup: Volcano / Coscheduling gang scheduling (core/gang.py)
    security_defaults: bool = True  # spec.securityDefaults: restricted-PSS settings where none are set
    checkpoint_store: CheckpointStore | None = None  # spec.checkpointStore: uploads and predownload

    @property
    def world_size(self) -> int:
        """Ranks of the gang: `replicas` pods of `ranks_per_pod` ranks each."""
        return self.replicas * self.ranks_per_pod

    @property
    def output_path(self) -> str:
        """Absolute output directory as seen inside a worker."""
        return posixpath.join(self.mount_path, self.output_dir)


@dataclass(frozen=True)
class CheckpointRef:
    step: int
    epoch: int | None = None
    file: str | None = None
    time: str | None = None
    attempt: int | None = None  # the attempt that wrote it (meta.json); None if not recorded


@dataclass(frozen=True)
class ProgressRef:
    """Rank 0's last reported step (respawn_protocol/report.py) and when it finished."""

    step: int
    time: str
    attempt: int | None = None


@dataclass(frozen=True)
class FailureRecord:
    time: str
    reason: str
    action: str
    message: str = ""
    pod: str | None = None
    node: str | None = None
    exit_code: int | None = None
    counted: bool = True
    chips: tuple[str, ...] | None = None  # the worker's NPUs; None: not annotated, the whole node


@dataclass(frozen=True)
class JobStatus:
    phase: Phase = Phase.PENDING
    attempt: int = 0
    restarts: int = 0  # counted restarts, ever (what `kubectl get tj` shows)
    uncounted_restarts: int = 0
    budget_used: int = 0  # counted restarts since the job last made progress
    consecutive_failures: int = 0  # any restart since the last progress; drives the backoff
    rapid_restarts: int = (
        0  # restarts in a row of attempts that lived < RAPID_WINDOW (core/policy/restart.py)
    )
    next_attempt_after: str | None = None
    failure_seen_at: str | None = None  # the failure that led to the current attempt
    checkpoint_step_at_restart: int | None = None
    faulty_nodes: tuple[str, ...] = ()
    faulty_nodes_since: dict[str, str] = field(default_factory=dict)  # node -> when it was added
    last_failure: FailureRecord | None = None
    last_complete_checkpoint: CheckpointRef | None = None
    last_progress: ProgressRef | None = None
    startup: StartupTimes | None = None
    last_recovery: Recovery | None = None
    checkpoint_interval: IntervalAdvice | None = None
    resumed_from_step: int | None = None
    observed_generation: int | None = None
    replicas: int | None = None  # replicas (pods) of the current attempt
    ranks_per_pod: int | None = None  # ranks per pod of the current attempt
    start_time: str | None = None
    completion_time: str | None = None
    attempt_created_at: str | None = None  # the current attempt's pods were created
    running_since: str | None = None  # every worker of the current attempt first seen running
    # The attempt whose pods the current attempt runs in, kept across in-place restarts; None: the
    # current attempt's own pods.
    pod_attempt: int | None = None
    checkpoint_store: StoreStatus | None = None  # the current attempt's uploads (spec.checkpointStore)
    conditions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class TrainingJob:
    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: JobSpec
    status: JobStatus
    deleting: bool = False
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def parse_job(obj: dict[str, Any]) -> TrainingJob:
    """A typed TrainingJob; `InvalidSpec` if the spec is unusable."""
    meta = obj.get("metadata") or {}
    return TrainingJob(
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 0),
        resource_version=meta.get("resourceVersion", ""),
        spec=parse_spec(obj.get("spec") or {}, namespace=meta.get("namespace", ""), name=meta["name"]),
        status=parse_status(obj.get("status") or {}),
        deleting=bool(meta.get("deletionTimestamp")),
        raw=obj,
    )


def parse_spec(spec: dict[str, Any], *, namespace: str, name: str) -> JobSpec:
    template = spec.get("template") or {}
    containers = (template.get("spec") or {}).get("containers") or []
    names = [c.get("name") for c in containers]
    if not names:
        raise InvalidSpec("spec.template.spec.containers must list the trainer container")
    check_template_size(template)
    trainer = spec.get("trainerContainer") or names[0]
    if trainer not in names:
        raise InvalidSpec(f"spec.trainerContainer {trainer!r} is not a container of the template ({names})")
    shared = spec.get("sharedVolume") or {}
    mount_path = shared.get("mountPath", DEFAULT_MOUNT_PATH)
    check_path("spec.sharedVolume.mountPath", mount_path, absolute=True)
    output_dir = spec.get("outputDir") or f"{namespace}/{name}"
    check_path("spec.outputDir", output_dir, absolute=False)
    check_tenant(output_dir, namespace)
    replicas, ranks_per_pod = int(spec["replicas"]), fields.ranks_per_pod(spec.get("ranksPerPod", 1))
    check_world_size(replicas, ranks_per_pod)
    return JobSpec(
        replicas=replicas,
        template=template,
        trainer_container=trainer,
        mount_path=mount_path,
        shared_volume=shared.get("volume"),
        output_dir=output_dir,
        scheduler_port=int(spec.get("schedulerPort", 8118)),
        failure_policy=parse_failure_policy(spec.get("failurePolicy") or {}),
        ranks_per_pod=ranks_per_pod,
        auto_interval=fields.interval_policy(spec.get("checkpointInterval", "Manual")),
        suspend=spec.get("suspend") is True,
        ttl_after_finished=fields.ttl(spec.get("ttlSecondsAfterFinished")),
        pod_group=fields.pod_group(spec.get("podGroup"), template),
        security_defaults=spec.get("securityDefaults") is not False,
        checkpoint_store=parse_store(spec.get("checkpointStore"), namespace=namespace, name=name),
    )


def parse_status(status: dict[str, Any]) -> JobStatus:
    checkpoint = status.get("lastCompleteCheckpoint")
    try:
        phase = Phase(status.get("phase", Phase.PENDING))
    except ValueError:
        phase = Phase.PENDING
    return JobStatus(
        phase=phase,
        attempt=int(status.get("attempt", 0)),
        restarts=int(status.get("restarts", 0)),
        uncounted_restarts=int(status.get("uncountedRestarts", 0)),
        budget_used=int(status.get("budgetUsed", 0)),
        consecutive_failures=int(status.get("consecutiveFailures", 0)),
        rapid_restarts=int(status.get("rapidRestarts", 0)),
        next_attempt_after=status.get("nextAttemptAfter"),
        failure_seen_at=status.get("failureSeenAt"),
        checkpoint_step_at_restart=opt_int(status.get("checkpointStepAtRestart")),
        faulty_nodes=tuple(status.get("faultyNodes") or ()),
        faulty_nodes_since=_times(status.get("faultyNodesSince")),
        last_failure=_failure_record(status.get("lastFailure")),
        last_complete_checkpoint=CheckpointRef(
            step=int(checkpoint["step"]),
            epoch=opt_int(checkpoint.get("epoch")),
            file=checkpoint.get("file"),
            time=checkpoint.get("time"),
            attempt=opt_int(checkpoint.get("attempt")),
        )
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("step"), int)
        else None,
        last_progress=_progress(status.get("lastProgress")),
        startup=parse_startup(status.get("startup")),
        last_recovery=parse_recovery(status.get("lastRecovery")),
        checkpoint_interval=parse_interval(status.get("checkpointInterval")),
        resumed_from_step=opt_int(status.get("resumedFromStep")),
        observed_generation=opt_int(status.get("observedGeneration")),
        replicas=opt_int(status.get("replicas")),
        ranks_per_pod=opt_int(status.get("ranksPerPod")),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
        attempt_created_at=status.get("attemptCreatedAt"),
        running_since=status.get("runningSince"),
        pod_attempt=opt_int(status.get("podAttempt")),
        checkpoint_store=parse_store_status(status.get("checkpointStore")),
        conditions=tuple(status.get("conditions") or ()),
    )


def _failure_record(failure: Any) -> FailureRecord | None:
    if not isinstance(failure, dict):
        return None
    code, chips = failure.get("exitCode"), failure.get("chips")
    return FailureRecord(
        time=failure.get("time", ""),
        reason=failure.get("reason", ""),
        action=failure.get("action", ""),
        message=failure.get("message", ""),
        pod=failure.get("pod"),
        node=failure.get("node"),
        exit_code=int(code) if isinstance(code, int | float) else None,
        counted=bool(failure.get("counted", True)),
        chips=tuple(c for c in chips if isinstance(c, str)) if isinstance(chips, list) else None,
    )


def _progress(value: Any) -> ProgressRef | None:
    if not isinstance(value, dict) or not isinstance(value.get("step"), int):
        return None
    return ProgressRef(int(value["step"]), str(value.get("time", "")), opt_int(value.get("attempt")))


def _times(value: Any) -> dict[str, str]:
    """node -> time, keeping only string pairs (a status is read leniently)."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def status_to_dict(status: JobStatus) -> dict[str, Any]:
    """The status body as written to the API; None fields are omitted."""
    body: dict[str, Any] = {
        "phase": status.phase.value,
        "attempt": status.attempt,
        "restarts": status.restarts,
        "uncountedRestarts": status.uncounted_restarts,
        "budgetUsed": status.budget_used,
        "consecutiveFailures": status.consecutive_failures,
        "rapidRestarts": status.rapid_restarts or None,
        "nextAttemptAfter": status.next_attempt_after,
        "failureSeenAt": status.failure_seen_at,
        "checkpointStepAtRestart": status.checkpoint_step_at_restart,
        "faultyNodes": list(status.faulty_nodes) or None,
        "faultyNodesSince": dict(status.faulty_nodes_since) or None,
        "resumedFromStep": status.resumed_from_step,
        "observedGeneration": status.observed_generation,
        "replicas": status.replicas,
        "ranksPerPod": status.ranks_per_pod,
        "startTime": status.start_time,
        "completionTime": status.completion_time,
        "attemptCreatedAt": status.attempt_created_at,
        "runningSince": status.running_since,
        "podAttempt": status.pod_attempt,
        "conditions": list(status.conditions),
    }
    if (f := status.last_failure) is not None:
        failure: dict[str, Any] = {
            "time": f.time,
            "reason": f.reason,
            "action": f.action,
            "message": f.message,
        }
        failure |= {"pod": f.pod, "node": f.node, "exitCode": f.exit_code, "counted": f.counted}
        failure["chips"] = list(f.chips) if f.chips is not None else None
        body["lastFailure"] = _compact(failure)
    if (c := status.last_complete_checkpoint) is not None:
        checkpoint = {"step": c.step, "epoch": c.epoch, "file": c.file, "time": c.time, "attempt": c.attempt}
        body["lastCompleteCheckpoint"] = _compact(checkpoint)
    if (p := status.last_progress) is not None:
        body["lastProgress"] = _compact({"step": p.step, "time": p.time, "attempt": p.attempt})
    if (t := status.startup) is not None:
        body["startup"] = startup_to_dict(t)
    if status.last_recovery is not None:
        body["lastRecovery"] = recovery_to_dict(status.last_recovery)
    if status.checkpoint_interval is not None:
        body["checkpointInterval"] = interval_to_dict(status.checkpoint_interval)
    if status.checkpoint_store is not None:
        body["checkpointStore"] = store_status_to_dict(status.checkpoint_store)
    return _compact(body)


def _compact(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}
