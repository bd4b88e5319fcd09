"""Strategy files under `save_strategy_dir`: what each rank's checkpoint files hold, as the
pretraining trainer's (`checkpoint/merge.py`) record it, written atomically at every start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer_image.checkpoint.commit import atomic_write_bytes, make_dirs
from trainer_image.checkpoint.merge import strategy_body, strategy_path

if TYPE_CHECKING:
    from trainer_image.grpo.backend import GrpoBackend
    from trainer_image.grpo.config import GrpoConfig


def write_grpo_strategy(config: GrpoConfig, *, rank: int, world_size: int, backend: GrpoBackend) -> None:
    directory = config.strategy_dir
    make_dirs(directory)
    body = strategy_body(
        rank=rank,
        world_size=world_size,
        saved=set(backend.policy_names) | set(backend.optimizer_names),
        batch_size=config.grpo.prompts_per_step * config.grpo.num_generations,
        remove_redundancy=False,
    )
    atomic_write_bytes(strategy_path(directory, rank), body)
