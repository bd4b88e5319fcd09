"""The contract between the respawn controller and the trainer: environment and exit codes.

The one place that says what an exit code means: the trainer exits with these codes and the
controller reads them through `classify_exit`.

Precedence of settings in the trainer: command-line flags > environment variables > YAML config.

Auto-resume under the controller: the controller names the job's own checkpoint directory
(`JOB_CHECKPOINT_DIR`) and leaves `load_checkpoint` / `resume_training` to the user. The trainer
resumes from the job's directory once it holds a step complete on every rank (as
`respawn_protocol.resolve` decides, agreed by the gang); until then the user's `load_checkpoint` /
`resume_training` apply (pretrained weights), or random init if there are none.

Ranks and pods: a gang of `replicas` pods with `ranksPerPod` = n ranks each has world size
replicas x n. Pod i gets RANK = i x n, its first rank; RANKS_PER_POD = n; WORLD_SIZE = replicas x n.
With n > 1 the pod's entry point starts n trainer processes (trainer_image/supervisor.py), local
rank l with RANK = i x n + l and RANKS_PER_POD = 1: each process trains exactly one rank and writes
`rank_<RANK>/`. The MindSpore variables follow msrun: MS_WORKER_NUM = the world size, MS_LOCAL_WORKER
= n, MS_NODE_RANK = i (the pod's index), MS_NODE_ID = the process's rank (the pod's first rank until
the supervisor gives each process its own).
"""

from __future__ import annotations

import enum
import re

# Set by the controller on every worker container.
OUTPUT_DIR = "RESPAWN_OUTPUT_DIR"
# The job's own checkpoint directory, OUTPUT_DIR/checkpoint: once it holds a step complete on every
# rank, the trainer resumes from it (resume_training: true) whatever load_checkpoint says.
JOB_CHECKPOINT_DIR = "RESPAWN_JOB_CHECKPOINT_DIR"
RANK = "RESPAWN_RANK"  # this process's rank; in a pod of several ranks, the pod's first rank
WORLD_SIZE = "RESPAWN_WORLD_SIZE"  # ranks of the gang: replicas x ranks per pod
RANKS_PER_POD = "RESPAWN_RANKS_PER_POD"  # ranks the pod's entry point starts (default 1: itself)
ATTEMPT = "RESPAWN_ATTEMPT"  # 0 on the first start, +1 per gang restart; a step pairs files of one attempt
# With spec.checkpointInterval: Auto, the controller's suggested interval (global steps): it replaces
# the CheckpointMonitor's save_checkpoint_steps. Absent until the controller has a suggestion.
SAVE_CHECKPOINT_STEPS = "RESPAWN_SAVE_CHECKPOINT_STEPS"

# The user's, never set by the controller: they override the YAML config's keys. With
# JOB_CHECKPOINT_DIR, load_checkpoint / resume_training apply while that directory holds no complete step.
LOAD_CHECKPOINT = "RESPAWN_LOAD_CHECKPOINT"
RESUME_TRAINING = "RESPAWN_RESUME_TRAINING"  # "true" / "false" / a checkpoint file name
TRAIN_DATASET_DIR = "RESPAWN_TRAIN_DATASET_DIR"
# The trainer's pre-flight (PreflightCheck): seconds a rank waits for rank 0's probe (default 300),
# and how many checkpoints of the gang the output directory must have room for (default 2; 0: off).
PREFLIGHT_TIMEOUT = "RESPAWN_PREFLIGHT_TIMEOUT"
PREFLIGHT_CHECKPOINTS = "RESPAWN_PREFLIGHT_CHECKPOINTS"

# spec.checkpointStore (an S3-compatible object store), set by the controller only when the job has
# one: after each local commit the trainer uploads the step (data objects first, the rank's
# meta.json last) under s3://BUCKET/PREFIX/, mirroring output_dir/checkpoint/, and before resolving
# it downloads what it needs of the newest step complete on every rank in the store.
STORE_ENDPOINT = "RESPAWN_STORE_ENDPOINT"  # http(s)://host:port
STORE_BUCKET = "RESPAWN_STORE_BUCKET"
STORE_PREFIX = "RESPAWN_STORE_PREFIX"  # no leading or trailing "/"; default <namespace>/<job name>
STORE_REGION = "RESPAWN_STORE_REGION"  # optional
# The credentials come from the job's Secret through secretKeyRef (the controller never reads it),
# under the names boto3 reads itself; the Secret holds them under the same keys.
STORE_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
STORE_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"

# MindFormers: the top-level directory shared by all nodes (checkpoints must live under it); a
# comma-separated list, as MindFormers reads it. The trainer's pre-flight checks output_dir against it.
SHARED_PATHS = "SHARED_PATHS"
# Where the trainer writes why it failed a pre-flight check: the container's terminationMessagePath
# (Kubernetes' default below). Written only if the file exists, never created.
TERMINATION_LOG = "RESPAWN_TERMINATION_LOG"
TERMINATION_LOG_DEFAULT = "/dev/termination-log"

# MindSpore dynamic-cluster variables, passed through untouched to mindspore.communication.
MS_SCHED_HOST = "MS_SCHED_HOST"
MS_SCHED_PORT = "MS_SCHED_PORT"
MS_WORKER_NUM = "MS_WORKER_NUM"
MS_LOCAL_WORKER = "MS_LOCAL_WORKER"
MS_NODE_RANK = "MS_NODE_RANK"
MS_NODE_ID = "MS_NODE_ID"
MS_ROLE = "MS_ROLE"

# Layout under output_dir, shared with docs/trainer.md.
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_NETWORK_DIR = "checkpoint_network"
META_FILE = "meta.json"
STEP_LOG = "log/rank_{rank}/steps.jsonl"


class ExitCode(enum.IntEnum):
    """Process exit codes of `python -m trainer_image`.

    Anything not listed (including 128+N for a death by signal N, e.g. 137 after SIGKILL or an OOM kill)
    is an unexpected failure and is retryable.
    """

    SUCCESS = 0
    """Training reached the configured end; the final checkpoint is committed."""
    FAILED = 1
    """Unexpected failure (crash, I/O error, lost peer). Retryable: restart and resume."""
    STOPPED = 75
    """Stopped on request (SIGTERM to this rank, or to a peer of its data-parallel gang) after
    committing a checkpoint of the last finished step, the same step on every rank of the gang.
    Nothing was lost; restart to continue. Like EX_TEMPFAIL."""
    TERMINATED = 143
    """Stopped by SIGTERM with no new checkpoint: during start-up, before the first step ended (the
    signal's default action, 128 + 15: nothing new to save), with no checkpoint configured, or when
    the step in progress could not finish (a lost peer). The last committed checkpoint is the resume
    point. Retryable."""
    CONFIG_ERROR = 78
    """Permanent: invalid config, bad path, missing or unreadable data or checkpoint the user named.
    Retrying with the same inputs fails the same way. Like EX_CONFIG."""
    PREFLIGHT_FAILED = 74
    """The environment failed a pre-flight check before training (`PreflightCheck`, named in the
    termination message): the output directory not writable, too little free space for two
    checkpoints, or not the directory rank 0 sees. Nothing was written but the probes. The
    infrastructure's fault, not the job's: restart without using the budget. Like EX_IOERR."""


class ExitClass(enum.Enum):
    SUCCEEDED = "Succeeded"
    STOPPED = "Stopped"
    PERMANENT = "Permanent"
    RETRYABLE = "Retryable"
    INFRASTRUCTURE = "Infrastructure"  # retry without counting it against the job


class PreflightCheck(enum.StrEnum):
    """The trainer's checks before training (`ExitCode.PREFLIGHT_FAILED`)."""

    WRITABLE = "writable"  # this rank can create, fsync and remove a file in output_dir
    FREE_SPACE = "free-space"  # output_dir's filesystem holds two more checkpoints of the gang
    SHARED = "shared-directory"  # every rank sees rank 0's probe in output_dir
    # a rank whose output_dir is not shared resumes from the checkpoint store, which it cannot read
    STORE = "checkpoint-store"

    @property
    def on_node(self) -> bool:
        """Whether a failure points at the rank's node (its disk), so the next attempt avoids it.
        A directory that is not shared is the volume's doing, a store that cannot be read the
        store's: any node would fail the same way."""
        return self not in (PreflightCheck.SHARED, PreflightCheck.STORE)


_PREFLIGHT_MESSAGE = re.compile(r"^pre-flight check (?P<check>[a-z-]+) failed")


def preflight_message(check: PreflightCheck, detail: str) -> str:
    """The termination message of a failed check; `preflight_check` reads the check back."""
    return f"pre-flight check {check.value} failed: {detail}"


def preflight_check(message: str | None) -> PreflightCheck | None:
    """The check a termination message names (its first line), or None."""
    m = _PREFLIGHT_MESSAGE.match((message or "").strip())
    if m is None:
        return None
    try:
        return PreflightCheck(m["check"])
    except ValueError:
        return None


def classify_exit(code: int) -> ExitClass:
    """What a controller should make of a trainer container's exit code."""
    if code == ExitCode.SUCCESS:
        return ExitClass.SUCCEEDED
    if code == ExitCode.STOPPED:
        return ExitClass.STOPPED
    if code == ExitCode.CONFIG_ERROR:
        return ExitClass.PERMANENT
    if code == ExitCode.PREFLIGHT_FAILED:
        return ExitClass.INFRASTRUCTURE
    return ExitClass.RETRYABLE


def parse_resume_training(value: str) -> bool | str:
    """Decode RESPAWN_RESUME_TRAINING / --resume_training: a boolean word or a checkpoint file name."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    return value.strip()
