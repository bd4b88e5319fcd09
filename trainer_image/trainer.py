"""The Python API, shaped like MindFormers': `Trainer(...).train(train_checkpoint=..., resume_training=...)`.

Runs one rank in the calling process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from respawn_protocol import contract
from respawn_protocol.layout import checkpoint_root
from trainer_image.config import (
    CheckpointMonitor,
    ConfigError,
    TrainerConfig,
    load_yaml,
    parse_config,
    set_dotted,
    to_dict,
)
from trainer_image.training.loop import Outcome, run
from trainer_image.training.report import Reporter
from trainer_image.training.stop import StopRequest


@dataclass
class TrainingArguments:
    """Overrides of the YAML config; None leaves the config value alone."""

    output_dir: str | None = None
    resume_from_checkpoint: str | None = None  # -> load_checkpoint
    resume_training: bool | str | None = None
    train_dataset_dir: str | None = None
    seed: int | None = None
    num_train_epochs: int | None = None
    per_device_train_batch_size: int | None = None

    def overrides(self) -> dict[str, Any]:
        pairs = {
            "output_dir": self.output_dir,
            "load_checkpoint": self.resume_from_checkpoint,
            "resume_training": self.resume_training,
            "train_dataset.data_loader.dataset_dir": self.train_dataset_dir,
            "seed": self.seed,
            "runner_config.epochs": self.num_train_epochs,
            "runner_config.batch_size": self.per_device_train_batch_size,
        }
        return {k: v for k, v in pairs.items() if v is not None}


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The controller's variables as config overrides."""
    out: dict[str, Any] = {}
    if environ.get(contract.OUTPUT_DIR):
        out["output_dir"] = environ[contract.OUTPUT_DIR]
    if environ.get(contract.LOAD_CHECKPOINT):
        out["load_checkpoint"] = environ[contract.LOAD_CHECKPOINT]
    if environ.get(contract.RESUME_TRAINING):
        out["resume_training"] = contract.parse_resume_training(environ[contract.RESUME_TRAINING])
    if environ.get(contract.TRAIN_DATASET_DIR):
        out["train_dataset.data_loader.dataset_dir"] = environ[contract.TRAIN_DATASET_DIR]
    return out


def save_interval(environ: Mapping[str, str]) -> int | None:
    """RESPAWN_SAVE_CHECKPOINT_STEPS, the controller's suggested interval in steps; None when unset."""
    raw = environ.get(contract.SAVE_CHECKPOINT_STEPS)
    if not raw:
        return None
    try:
        steps = int(raw)
    except ValueError as e:
        raise ConfigError(f"{contract.SAVE_CHECKPOINT_STEPS}={raw!r}: not an integer") from e
    if steps < 1:
        raise ConfigError(f"{contract.SAVE_CHECKPOINT_STEPS}={steps}: must be at least 1")
    return steps


def with_save_interval(config: TrainerConfig, environ: Mapping[str, str]) -> TrainerConfig:
    """The controller's suggested checkpoint interval (spec.checkpointInterval: Auto) in place of the
    CheckpointMonitor's; without a monitor there is nothing to save, so nothing changes."""
    steps = save_interval(environ)
    if steps is None:
        return config
    callbacks = [
        dataclasses.replace(c, save_checkpoint_steps=steps) if isinstance(c, CheckpointMonitor) else c
        for c in config.callbacks
    ]
    return dataclasses.replace(config, callbacks=callbacks)


def rank_and_world(environ: Mapping[str, str]) -> tuple[int, int]:
    try:
        rank = int(environ.get(contract.RANK, "0"))
        world = int(environ.get(contract.WORLD_SIZE, "1"))
    except ValueError as e:
        raise ConfigError(f"{contract.RANK}/{contract.WORLD_SIZE}: {e}") from e
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"{contract.RANK}={rank} does not fit {contract.WORLD_SIZE}={world}")
    return rank, world


def attempt_of(environ: Mapping[str, str]) -> int | None:
    value = environ.get(contract.ATTEMPT)
    if value is None or value == "":
        return None
    try:
        attempt = int(value)
    except ValueError as e:
        raise ConfigError(f"{contract.ATTEMPT}: {e}") from e
    if attempt < 0:
        raise ConfigError(f"{contract.ATTEMPT}={attempt} is negative")
    return attempt


def job_checkpoint_dir(environ: Mapping[str, str], config: TrainerConfig) -> Path | None:
    """The controller's RESPAWN_JOB_CHECKPOINT_DIR: auto-resume from it wins over load_checkpoint once
    it holds a complete step. It must be where this run writes its checkpoints (output_dir/checkpoint),
    or the job would never resume from them."""
    from trainer_image.config import ConfigError

    value = environ.get(contract.JOB_CHECKPOINT_DIR)
    if not value:
        return None
    path = Path(value)
    own = checkpoint_root(Path(config.output_dir))
    if path.resolve() != own.resolve():
        raise ConfigError(
            f"{contract.JOB_CHECKPOINT_DIR}={value} is not where this run writes its checkpoints "
            f"({own}, from output_dir): the job would never resume from them"
        )
    return path


def build_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | TrainerConfig | None,
    *layers: Mapping[str, Any],
) -> TrainerConfig:
    """YAML (or a mapping) with override layers applied in order: later layers win."""
    if isinstance(config, TrainerConfig):
        raw: dict[str, Any] = to_dict(config)
    elif isinstance(config, Mapping):
        raw = dict(config)
    elif config is None:
        raw = {}
    else:
        raw = load_yaml(Path(config))
    for layer in layers:
        for key, value in layer.items():
            set_dotted(raw, key, value)
    return parse_config(raw)


class Trainer:
    """Trains one rank in this process. Settings: arguments > environment > YAML."""

    def __init__(
        self,
        config: str | os.PathLike[str] | Mapping[str, Any] | TrainerConfig | None = None,
        args: TrainingArguments | None = None,
        *,
        train_dataset: str | None = None,
        environ: Mapping[str, str] | None = None,
        apply_env: bool = True,
    ) -> None:
        environ = os.environ if environ is None else environ
        extra = {"train_dataset.data_loader.dataset_dir": train_dataset} if train_dataset else {}
        env = env_overrides(environ) if apply_env else {}
        self.config = build_config(config, env, (args or TrainingArguments()).overrides(), extra)
        if apply_env:
            self.config = with_save_interval(self.config, environ)
        self.rank, self.world_size = rank_and_world(environ)
        self.attempt = attempt_of(environ)
        self.job_checkpoint_dir = job_checkpoint_dir(environ, self.config)
        self._environ = dict(environ)

    def train(
        self, train_checkpoint: str | None = None, resume_training: bool | str | None = None
    ) -> Outcome:
        overrides: dict[str, Any] = {}
        if train_checkpoint is not None:
            overrides["load_checkpoint"] = train_checkpoint
        if resume_training is not None:
            overrides["resume_training"] = resume_training
        config = build_config(self.config, overrides) if overrides else self.config
        stop = StopRequest()
        stop.install()
        reporter = Reporter.from_env(self._environ, rank=self.rank, attempt=self.attempt)
        try:
            return run(
                config,
                rank=self.rank,
                world_size=self.world_size,
                stop=stop,
                attempt=self.attempt,
                job_checkpoint_dir=self.job_checkpoint_dir,
                reporter=reporter,
            )
        finally:
            reporter.close()
            stop.uninstall()
