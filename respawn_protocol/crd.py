"""The TrainingJob API's identity and the labels the controller puts on a job's pods; the CRD in
deploy/crds/ spells the same names."""

from __future__ import annotations

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

# status.lastRecovery.seconds, in the order the phases happen (controller/api/timings.py). `firstStep`
# includes `compile`, and each trainer phase is the slowest rank's, so they do not add up to the total.
RECOVERY_PHASES = (
    "detect",  # the failure happened -> the controller saw it
    "teardown",  # -> the next attempt's pods created: the old gang stopped and gone, the backoff
    "podStart",  # -> every trainer container running: create, schedule, pull, start
    "processStart",  # -> the trainer processes started
    "import",
    "rendezvous",
    "load",
    "compile",
    "firstStep",
)
