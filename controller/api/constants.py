"""Names shared by the CRD, the controller and its tests."""

from __future__ import annotations

import enum

GROUP = "training.respawn.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"

LABEL_JOB = f"{GROUP}/job-name"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_RANK = f"{GROUP}/rank"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "respawn"

SHARED_VOLUME_NAME = "respawn-shared"
DEFAULT_MOUNT_PATH = "/mnt/shared"
ASCEND_RESOURCE = "huawei.com/Ascend910"


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
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
    INVALID_SPEC = "InvalidSpec"
    BUDGET_EXCEEDED = "RestartBudgetExceeded"


class Condition(enum.StrEnum):
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
