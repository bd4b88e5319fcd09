"""GRPO test helpers: a tiny GRPO config, `python -m trainer_image.grpo` processes (alone or as a
data-parallel gang), and the per-step records a run leaves."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from respawn_protocol.steplog import effective_steps, read_steps
from tests.support.trainer import TrainerProcess, apply_overrides

# Small enough for a start in seconds; a save every step so that kills land inside saves.
GRPO_TINY: dict[str, Any] = {
    "seed": 5,
    "context": {"mode": 0},
    "load_ckpt_format": "ckpt",
    "grpo": {
        "operand_max": 9,
        "prompts_per_step": 4,
        "num_generations": 4,
        "max_completion_length": 3,
        "beta": 0.04,
        "epsilon": 0.2,
        "updates_per_rollout": 2,
        "total_steps": 12,
    },
    "callbacks": [
        {
            "type": "CheckpointMonitor",
            "prefix": "grpo",
            "save_checkpoint_steps": 1,
            "keep_checkpoint_max": 2,
            "checkpoint_format": "ckpt",
        }
    ],
    "lr_schedule": {"type": "ConstantWarmUpLR", "learning_rate": 0.003, "warmup_steps": 2},
    "model": {
        "type": "llama",
        "seq_length": 9,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 88,
    },
}
# What a step's line must repeat bitwise after any resume.
EXACT = ("loss_bits", "reward_bits", "kl_bits")


def grpo_config(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """GRPO_TINY writing to `output_dir`; dotted overrides with `__` for dots (`grpo__total_steps=6`)."""
    config = copy.deepcopy(GRPO_TINY)
    config["output_dir"] = str(output_dir)
    return apply_overrides(config, overrides)


def grpo_process(
    config: Path, env: dict[str, str], log: Path, args: list[str], extra: dict[str, str]
) -> TrainerProcess:
    """`python -m trainer_image.grpo`; runs are longer than the pretraining tests'."""
    return TrainerProcess(
        config, env, log, extra, module="trainer_image.grpo", args=tuple(args), timeout=300.0
    )


def steps(save_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    return read_steps(save_dir / "log" / f"rank_{rank}" / "steps.jsonl")


def exact(save_dir: Path, rank: int = 0) -> dict[int, tuple[str, ...]]:
    """global_step -> the bits of loss, reward_mean and kl, on the surviving history."""
    return {g: tuple(r[k] for k in EXACT) for g, r in effective_steps(steps(save_dir, rank)).items()}


def starts(save_dir: Path, rank: int = 0) -> list[Any]:
    return [r["resumed_from"] for r in steps(save_dir, rank) if "resumed_from" in r]
