"""The end-to-end trainer run: its run.yaml, its TrainingJob, and the loss records it leaves.

Used by the e2e tests (tests/e2e), the chaos soak harness and its script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from respawn_protocol.steplog import read_steps
from tests.support.manifests import trainer_command, training_job
from tests.support.trainer import TINY_LLAMA

# Saving every step makes a step slow enough (tens of ms) to be killed mid-run, and makes kills
# land inside saves too.
RUN_YAML: dict[str, Any] = {
    "seed": 11,
    "context": {"mode": 0},
    "runner_config": {"epochs": 1, "batch_size": 8},
    "callbacks": [
        {
            "type": "CheckpointMonitor",
            "prefix": "e2e",
            "save_checkpoint_steps": 1,
            "keep_checkpoint_max": 2,
            "checkpoint_format": "ckpt",
            "async_save": False,
        }
    ],
    "lr_schedule": {
        "type": "CosineWithWarmUpLR",
        "learning_rate": 0.003,
        "warmup_steps": 3,
        "total_steps": 60,
    },
    "model": TINY_LLAMA,
    "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": 960}},
}


def long_run(epochs: int, **overrides: Any) -> dict[str, Any]:
    """RUN_YAML over `epochs` epochs (the corpus gives 49 steps per epoch at 2 ranks; on an idle
    machine one epoch is over before the controller has seen a checkpoint), the LR schedule over the
    whole run. The ranks train alone and one may run ahead: 20 kept checkpoints let them share a
    complete step early on (the trainer never prunes the newest complete one afterwards), so a
    restart does not go back to step 0. `overrides` replace top-level keys."""
    (monitor,) = RUN_YAML["callbacks"]
    return {
        **RUN_YAML,
        "runner_config": {**RUN_YAML["runner_config"], "epochs": epochs},
        "callbacks": [{**monitor, "keep_checkpoint_max": 20}],
        "lr_schedule": {**RUN_YAML["lr_schedule"], "total_steps": -1},
        **overrides,
    }


def trainer_job(name: str, shared: Path, *, config: str = "run", **options: Any) -> dict[str, Any]:
    """2 ranks of the trainer with the run.yaml of ConfigMap `config`, `shared` as the shared volume,
    2 restarts, backoff 0-1 s; `options` as `training_job`'s."""
    options.setdefault("backoff", (0, 1))
    options.setdefault("maxRestarts", 2)
    return training_job(name, command=trainer_command(), run_config=config, shared=shared, **options)


def losses(shared: Path, namespace: str, job: str, rank: int) -> list[dict[str, Any]]:
    """A rank's steps.jsonl records, in the layout a job's output dir has under the shared root."""
    return read_steps(shared / namespace / job / "log" / f"rank_{rank}" / "steps.jsonl")


def assert_on_reference_curve(
    shared: Path, namespace: str, job: str, reference_job: str, rank: int, total: int
) -> list[dict[str, Any]]:
    """Every record of `job`'s rank, steps redone after a resume included, has the loss bits of the
    uninterrupted `reference_job` at its global step, and every step 1..total is there. Returns the
    records, for the caller's checks of where it resumed."""
    reference = {r["global_step"]: r["loss_bits"] for r in losses(shared, namespace, reference_job, rank)}
    assert sorted(reference) == list(range(1, total + 1)), (rank, sorted(reference)[-3:])
    records = losses(shared, namespace, job, rank)
    for record in records:
        assert record["loss_bits"] == reference[record["global_step"]], (rank, record)
    assert {r["global_step"] for r in records} == set(reference), rank
    return records
