"""The controller's own names: phases, actions, failure reasons, conditions, volume defaults.
The API's group, version and labels are in `respawn_protocol.crd`."""

from __future__ import annotations

import enum

SHARED_VOLUME_NAME = "respawn-shared"
DEFAULT_MOUNT_PATH = "/mnt/shared"
ASCEND_RESOURCE = "huawei.com/Ascend910"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"  # spec.suspend: no pods, status kept; unsuspended, a new attempt starts
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Action(enum.StrEnum):
    RESTART_JOB = "RestartJob"
    RESTART_JOB_IGNORE_BUDGET = "RestartJobIgnoreBudget"
    FAIL_JOB = "FailJob"


class Reason(enum.StrEnum):
    """Why an attempt failed; what `onReasons` rules match and metrics are labelled with."""

    ERROR = "Error"  # non-zero exit
    OOM_KILLED = "OOMKilled"
    PERMANENT_ERROR = "PermanentError"  # the trainer's configuration/data exit code
    STOPPED = "Stopped"  # the trainer checkpointed and exited on SIGTERM
    EVICTED = "Evicted"
    PREEMPTED = "Preempted"
    NODE_LOST = "NodeLost"
    DEVICE_FAULT = "DeviceFault"
    POD_DELETED = "PodDeleted"
    PROGRESS_TIMEOUT = "ProgressTimeout"
    STARTUP_TIMEOUT = "StartupTimeout"  # the gang not all running within startupTimeoutSeconds
    INVALID_SPEC = "InvalidSpec"
    PREFLIGHT_FAILED = "PreflightFailed"  # the trainer's pre-flight check of its environment
    BUDGET_EXCEEDED = "RestartBudgetExceeded"


class Condition(enum.StrEnum):
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    # The last pass could not carry out its plan (the API refused a write, a name is taken): retried
    # with backoff, cleared by the next pass that succeeds.
    RECONCILE_ERROR = "ReconcileError"
    # False while the scheduler cannot place a worker of the attempt (its reason and message); set
    # only once that happened, True again when every worker is on a node.
    SCHEDULED = "Scheduled"
