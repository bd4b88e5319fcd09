"""The trainer's tests' helpers: tiny configs, trainer processes (alone or as a data-parallel gang
with the variables the controller injects), and what a run leaves behind."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from controller.api.types import parse_job
from controller.core import podspec
from devcluster.controlplane import free_port
from respawn_protocol.steplog import effective_steps, read_steps

PROCESS_TIMEOUT = 120.0

# The tests' model: a 2-layer LLaMA over bytes, seconds to train on a CPU.
TINY_LLAMA: dict[str, Any] = {
    "type": "llama",
    "seq_length": 32,
    "hidden_size": 32,
    "num_layers": 2,
    "num_heads": 4,
    "intermediate_size": 88,
}
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
    "model": {**TINY_LLAMA, "dropout": 0.1},
    "train_dataset": {"data_loader": {"type": "TextDataset", "num_samples": 80}},
}
TOTAL_STEPS = 20  # 80 samples / batch 8 = 10 steps per epoch, 2 epochs


def tiny_config(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """The tiny config writing to `output_dir`, auto-recovering from its own checkpoint directory.
    Overrides use dotted keys with `__` for dots, e.g. `runner_config__epochs=3`."""
    config = copy.deepcopy(TINY)
    config["output_dir"] = str(output_dir)
    config["load_checkpoint"] = str(output_dir / "checkpoint")
    return apply_overrides(config, overrides)


def apply_overrides(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys, `__` for the dots and list indexes as numbers (`callbacks__0__prefix`)."""
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


class TrainerProcess:
    """`python -m <module> --config <config_path> <args>` (the trainer, or its GRPO entry point)."""

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str],
        log_path: Path,
        extra_env: dict[str, str],
        *,
        module: str = "trainer_image",
        args: tuple[str, ...] = (),
        timeout: float = PROCESS_TIMEOUT,
    ) -> None:
        self.log_path = log_path
        self.timeout = timeout
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config_path), *args],
            env={**env, **extra_env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=config_path.parent,
        )

    def wait(self, timeout: float | None = None) -> int:
        try:
            return self.proc.wait(timeout=self.timeout if timeout is None else timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def run_to_end(launch: Callable[..., TrainerProcess], config_path: Path, **extra_env: str) -> TrainerProcess:
    p = launch(config_path, **extra_env)
    p.wait()
    return p


def controller_env(output_dir: Path, *, attempt: int, rank: int = 0, replicas: int = 1) -> dict[str, str]:
    """What the controller injects into a worker of a job whose output directory is `output_dir`
    (`controller.core.podspec.trainer_env`), without MindSpore's cluster variables, which only a
    data-parallel gang reads (`start_gang` sets those for 127.0.0.1)."""
    job = parse_job(
        {
            # The job's directory lies under its namespace's (controller.api.paths.check_tenant).
            "metadata": {"name": "job", "namespace": output_dir.name, "uid": "u"},
            "spec": {
                "replicas": replicas,
                "template": {"spec": {"containers": [{"name": "trainer", "image": "t"}]}},
                "sharedVolume": {"mountPath": str(output_dir.parent)},
                "outputDir": output_dir.name,
            },
        }
    )
    env = {e["name"]: e["value"] for e in podspec.trainer_env(job, attempt, rank, replicas)}
    return {k: v for k, v in env.items() if not k.startswith("MS_")}


WORLD = 2
WAIT = 900.0  # seconds per gang process: MindSpore init alone took ~2 min on a loaded 2-core machine


def start_gang(launch: Launcher, path: Path, **rank1_env: str) -> list[TrainerProcess]:
    """One process per rank with the variables the controller injects, and a fresh scheduler port."""
    port = free_port()
    return [
        launch(path, log_name=f"rank{rank}", **rank_env(rank, port), **(rank1_env if rank == 1 else {}))
        for rank in range(WORLD)
    ]


def finish(procs: list[TrainerProcess], expect: int = 0) -> None:
    """Every process exits with `expect` (its log's tail in the failure); none is left running."""
    try:
        for p in procs:
            assert p.wait(WAIT) == expect, p.output()[-3000:]
    finally:
        for p in procs:
            p.kill()


def rank_env(rank: int, port: int, world: int = WORLD) -> dict[str, str]:
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


class Launcher:
    """Start trainer processes with `env`, each logging next to its config as `<stem>-<log_name>.log`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(self, path: Path, *, log_name: str, **extra_env: str) -> TrainerProcess:
        return TrainerProcess(path, self.env, path.with_name(f"{path.stem}-{log_name}.log"), extra_env)


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
