"""The GRPO run's configuration: YAML in MindFormers' style, parsed as strictly as the pretraining
config (unknown keys and wrong types name the key), with MindSpore RLHF's launch flags as keys.

Layers, later wins: YAML, the controller's environment, command-line flags. Directories:
`save_checkpoint_dir` (default `output_dir`) holds `checkpoint/rank_N/` (policy and optimizer
files, meta.json), `ref/rank_N/` (the reference, written once) and `log/rank_N/steps.jsonl`;
`save_strategy_dir` (default `<save_checkpoint_dir>/strategy`) the strategy files.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from respawn_protocol import contract
from trainer_image.config import (
    Callback,
    CheckpointFormat,
    CheckpointMonitor,
    ConfigError,
    ContextConfig,
    DataLoader,
    LrSchedule,
    ModelConfig,
    OptimizerConfig,
    TrainDataset,
    TrainerConfig,
    _build,
    _validate_monitors,
    load_yaml,
    set_dotted,
)
from trainer_image.grpo.task import PROMPT_LENGTH, SumTask


@dataclass
class GrpoSection:
    task: Literal["sum"] = "sum"
    operand_max: int = 19  # the sum task's operands: 0..operand_max
    prompts_per_step: int = 4  # per rank and iteration
    num_generations: int = 4  # G: completions sampled per prompt
    max_completion_length: int = 3
    temperature: float = 1.0
    beta: float = 0.04  # weight of the KL penalty to the reference
    epsilon: float = 0.2  # clip range of the policy ratio
    updates_per_rollout: int = 2  # optimizer updates on each rollout's samples
    total_steps: int = 40  # GRPO iterations (a rollout and its updates each)


@dataclass
class GrpoConfig:
    seed: int = 0
    output_dir: str = "./output"
    save_checkpoint_dir: str = ""  # "" = output_dir
    save_strategy_dir: str = ""  # "" = <save_checkpoint_dir>/strategy
    actor_checkpoint_path: str = ""  # the initial policy; with resume_training, a state to continue
    ref_checkpoint_path: str = ""  # "" = the initial policy, saved once under <save_checkpoint_dir>/ref
    resume_training: bool = False
    load_ckpt_format: CheckpointFormat = "ckpt"
    use_parallel: bool = False
    context: ContextConfig = field(default_factory=ContextConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(seq_length=16))
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LrSchedule = field(default_factory=lambda: LrSchedule(type="ConstantWarmUpLR"))
    callbacks: list[Callback] = field(default_factory=list)
    grpo: GrpoSection = field(default_factory=GrpoSection)

    @property
    def save_dir(self) -> Path:
        return Path(self.save_checkpoint_dir or self.output_dir)

    @property
    def strategy_dir(self) -> Path:
        return Path(self.save_strategy_dir) if self.save_strategy_dir else self.save_dir / "strategy"

    @property
    def checkpoint_monitor(self) -> CheckpointMonitor | None:
        found = [c for c in self.callbacks if isinstance(c, CheckpointMonitor)]
        return found[0] if found else None

    @property
    def task(self) -> SumTask:
        return SumTask(self.grpo.operand_max, self.grpo.max_completion_length)

    def trainer_view(self) -> TrainerConfig:
        """The same run in the pretraining trainer's terms, for the pieces shared with it (the
        resume sources and their resolution, the data-parallel cluster): the actor checkpoint is
        `load_checkpoint`, the checkpoints live under `save_dir`."""
        return TrainerConfig(
            seed=self.seed,
            output_dir=str(self.save_dir),
            load_checkpoint=self.actor_checkpoint_path,
            resume_training=self.resume_training,
            load_ckpt_format=self.load_ckpt_format,
            use_parallel=self.use_parallel,
            context=self.context,
            model=self.model,
            optimizer=self.optimizer,
            lr_schedule=self.lr_schedule,
            callbacks=self.callbacks,
        )


def compile_cache_view(config: GrpoConfig) -> TrainerConfig:
    """`trainer_view` for the compile cache's key (training/compile_cache.py), which hashes a
    TrainerConfig: the GRPO section, which shapes the graphs and is no TrainerConfig field, goes in
    as the digest in a field the GRPO graphs never read; the checkpoint format, which no graph
    reads, is left out. The entry script (grpo/__main__.py) keys GRPO's entries apart from
    pretraining's."""
    digest = zlib.crc32(json.dumps(dataclasses.asdict(config.grpo), sort_keys=True).encode())
    loader = DataLoader(type="SyntheticDataset", num_samples=1, content_seed=digest)
    return dataclasses.replace(
        config.trainer_view(), load_ckpt_format="ckpt", train_dataset=TrainDataset(data_loader=loader)
    )


def parse_grpo_config(raw: Mapping[str, Any]) -> GrpoConfig:
    config = _build(GrpoConfig, raw, "")
    validate(config)
    return config


def validate(c: GrpoConfig) -> None:
    g = c.grpo
    for name in ("operand_max", "prompts_per_step", "num_generations", "max_completion_length"):
        if getattr(g, name) < 1:
            raise ConfigError(f"grpo.{name}: must be >= 1, got {getattr(g, name)}")
    for name in ("updates_per_rollout", "total_steps"):
        if getattr(g, name) < 1:
            raise ConfigError(f"grpo.{name}: must be >= 1, got {getattr(g, name)}")
    if g.operand_max > 49:
        raise ConfigError(f"grpo.operand_max: the sum must fit two digits (at most 49), got {g.operand_max}")
    if g.num_generations < 2:
        raise ConfigError("grpo.num_generations: group-normalised advantages need at least 2")
    if g.temperature <= 0 or g.beta < 0 or not 0 < g.epsilon < 1:
        raise ConfigError("grpo: temperature > 0, beta >= 0 and 0 < epsilon < 1")
    if c.model.seq_length < PROMPT_LENGTH + g.max_completion_length:
        raise ConfigError(
            f"model.seq_length: a prompt ({PROMPT_LENGTH}) and a completion "
            f"({g.max_completion_length}) need {PROMPT_LENGTH + g.max_completion_length}, "
            f"got {c.model.seq_length}"
        )
    if c.model.vocab_size != 256 or c.model.dropout != 0:
        raise ConfigError("model: GRPO needs vocab_size 256 (bytes) and dropout 0")
    if c.lr_schedule.total_steps == 0 or c.lr_schedule.total_steps < -1:
        raise ConfigError("lr_schedule.total_steps: must be positive, or -1 for every update of the run")
    _validate_monitors(c.trainer_view())
    monitor = c.checkpoint_monitor
    if monitor is not None and monitor.async_save:
        raise ConfigError("callbacks: GRPO saves synchronously (async_save: False)")


def grpo_env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The controller's and the user's variables as overrides (contract.py)."""
    out: dict[str, Any] = {}
    if environ.get(contract.OUTPUT_DIR):
        out["output_dir"] = environ[contract.OUTPUT_DIR]
    if environ.get(contract.LOAD_CHECKPOINT):
        out["actor_checkpoint_path"] = environ[contract.LOAD_CHECKPOINT]
    if environ.get(contract.RESUME_TRAINING):
        value = contract.parse_resume_training(environ[contract.RESUME_TRAINING])
        if not isinstance(value, bool):
            raise ConfigError(f"{contract.RESUME_TRAINING}={value!r}: GRPO takes true or false")
        out["resume_training"] = value
    return out


def build_grpo_config(path: str | Path | None, *layers: Mapping[str, Any]) -> GrpoConfig:
    raw: dict[str, Any] = load_yaml(Path(path)) if path is not None else {}
    for layer in layers:
        for key, value in layer.items():
            set_dotted(raw, key, value)
    return parse_grpo_config(raw)


def with_save_interval(config: GrpoConfig, steps: int | None) -> GrpoConfig:
    """The controller's suggested interval (RESPAWN_SAVE_CHECKPOINT_STEPS) in place of the monitor's."""
    if steps is None:
        return config
    callbacks = [
        dataclasses.replace(c, save_checkpoint_steps=steps) if isinstance(c, CheckpointMonitor) else c
        for c in config.callbacks
    ]
    return dataclasses.replace(config, callbacks=callbacks)
