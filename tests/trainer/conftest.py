"""Helpers for trainer tests: tiny configs, trainer processes, and polling with deadlines."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from respawn_protocol.steplog import effective_steps, read_steps

REPO = Path(__file__).resolve().parents[2]
PROCESS_TIMEOUT = 120.0

TINY: dict[str, Any] = {
    "seed": 7,
    "context": {"mode": 0},
    "resume_training": True,
    "load_ckpt_format": "ckpt",
    "runner_config": {"epochs": 2, "batch_size": 8},
    "runner_wrapper": {"scale_sense": {"loss_scale_value": 1024.0, "scale_window": 6}},
    "callbacks": [
        {
            "type": "CheckpointMonitor",
            "prefix": "tiny",
            "save_checkpoint_steps": 1,
            "keep_checkpoint_max": 3,
            "checkpoint_format": "ckpt",
            "async_save": False,
            "save_network_params": True,
        }
    ],
    "lr_schedule": {
        "type": "CosineWithWarmUpLR",
        "learning_rate": 0.003,
        "warmup_steps": 3,
        "total_steps": 40,
    },
    "model": {
        "type": "llama",
        "seq_length": 32,
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 88,
        "dropout": 0.1,
    },
    "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": 80}},
}
TOTAL_STEPS = 20  # 80 samples / batch 8 = 10 steps per epoch, 2 epochs


def tiny_config(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The tiny config writing to `output_dir`, auto-recovering from its own checkpoint directory.
    Overrides use dotted keys with `__` for dots, e.g. `runner_config__epochs=3`."""
    config = copy.deepcopy(TINY)
    config["output_dir"] = str(output_dir)
    config["load_checkpoint"] = str(output_dir / "checkpoint")
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = config
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[leaf] = value
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def trainer_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for trainer processes; a shared MindSpore compile cache keeps restarts fast."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPAWN_")}
    env.update(
        PYTHONPATH=str(REPO),
        GLOG_v="3",
        MS_COMPILER_CACHE_ENABLE="1",
        MS_COMPILER_CACHE_PATH=str(tmp_path_factory.mktemp("compile_cache")),
    )
    return env


class TrainerProcess:
    def __init__(
        self, config_path: Path, env: dict[str, str], log_path: Path, extra_env: dict[str, str]
    ) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer_image", "--config", str(config_path)],
            env={**env, **extra_env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=config_path.parent,
        )

    def wait(self, timeout: float = PROCESS_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def launch(trainer_env: dict[str, str]) -> Iterator[Callable[..., TrainerProcess]]:
    started: list[TrainerProcess] = []

    def _launch(config_path: Path, **extra_env: str) -> TrainerProcess:
        p = TrainerProcess(config_path, trainer_env, config_path.with_suffix(".log"), extra_env)
        started.append(p)
        return p

    yield _launch
    for p in started:
        if p.proc.poll() is None:
            p.kill()


def run_to_end(launch: Callable[..., TrainerProcess], config_path: Path, **extra_env: str) -> TrainerProcess:
    p = launch(config_path, **extra_env)
    p.wait()
    return p


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.005, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def step_lines(output_dir: Path, rank: int = 0) -> list[dict[str, Any]]:
    return read_steps(output_dir / "log" / f"rank_{rank}" / "steps.jsonl")


def losses(output_dir: Path) -> dict[int, str]:
    """global_step -> float32 bit pattern of the loss on the surviving history."""
    return {g: r["loss_bits"] for g, r in effective_steps(step_lines(output_dir)).items()}


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under `path` with its size and mtime, to show nothing was touched."""
    return {
        str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
