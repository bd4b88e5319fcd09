"""GRPO test helpers: a tiny GRPO config, `python -m trainer_image.grpo` processes (alone or as a
data-parallel gang), and the per-step records a run leaves."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from devcluster.controlplane import free_port
from respawn_protocol.steplog import effective_steps, read_steps

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
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = config
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[leaf] = value
    return config


def write_grpo_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


class GrpoProcess:
    def __init__(
        self, config: Path, env: dict[str, str], log: Path, args: list[str], extra: dict[str, str]
    ) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer_image.grpo", "--config", str(config), *args],
            env={**env, **extra},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )

    def wait(self, timeout: float = 300.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def gang_env(rank: int, world: int, port: int) -> dict[str, str]:
    """What the controller injects for MindSpore's cluster, on 127.0.0.1."""
    return {
        "RESPAWN_RANK": str(rank),
        "RESPAWN_WORLD_SIZE": str(world),
        "MS_SCHED_HOST": "127.0.0.1",
        "MS_SCHED_PORT": str(port),
        "MS_WORKER_NUM": str(world),
        "MS_NODE_RANK": str(rank),
        "MS_NODE_ID": str(rank),
        "MS_ROLE": "MS_WORKER",
    }


def fresh_port() -> int:
    return free_port()


def steps(save_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    return read_steps(save_dir / "log" / f"rank_{rank}" / "steps.jsonl")


def exact(save_dir: Path, rank: int = 0) -> dict[int, tuple[str, ...]]:
    """global_step -> the bits of loss, reward_mean and kl, on the surviving history."""
    return {g: tuple(r[k] for k in EXACT) for g, r in effective_steps(steps(save_dir, rank)).items()}


def starts(save_dir: Path, rank: int = 0) -> list[Any]:
    return [r["resumed_from"] for r in steps(save_dir, rank) if "resumed_from" in r]
