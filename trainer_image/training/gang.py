"""A rank's place in its gang, and what a run of the loop ends with (training/loop.py)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainer_image.training.resume import Agree, Barrier

if TYPE_CHECKING:
    from trainer_image.config import TrainerConfig
    from trainer_image.training.parallel import Cluster
    from trainer_image.training.stop import StopRequest


@dataclass(frozen=True)
class Outcome:
    status: Literal["completed", "stopped"]
    global_step: int
    checkpointed: bool  # the state at `global_step` is committed (or nothing ran since the load)
    resumed_from: dict[str, Any] | None


@dataclass(frozen=True)
class Gang:
    """This rank's place: its rank, the gang's size, the controller's attempt and the job's checkpoint
    directory (auto-resume from it wins over load_checkpoint; None outside respawn), and the cluster
    when the ranks train data parallel (None: each rank trains alone on its shard)."""

    rank: int
    world_size: int
    attempt: int | None = None
    cluster: Cluster | None = None
    job_checkpoint_dir: Path | None = None

    @property
    def data_parallel_ranks(self) -> int:
        """How many ranks share each global batch."""
        return self.world_size if self.cluster is not None else 1

    @property
    def agree(self) -> Agree | None:
        return None if self.cluster is None else self.cluster.agree

    @property
    def barrier(self) -> Barrier | None:
        return None if self.cluster is None else self.cluster.barrier


@contextlib.contextmanager
def joined(
    config: TrainerConfig,
    *,
    rank: int,
    world_size: int,
    attempt: int | None,
    job_checkpoint_dir: Path | None,
    stop: StopRequest,
    phase: Callable[[str, float], None],
    started: float,
) -> Iterator[Gang]:
    """This rank's gang for one run: data parallel (`use_parallel` with several ranks) joins
    MindSpore's cluster, whose ranks then stop after the same step, and leaves it at the end."""
    cluster = None
    if config.use_parallel and world_size > 1:
        from trainer_image.training.parallel import Cluster

        cluster = Cluster.join(
            config, rank=rank, world_size=world_size, environ=os.environ, phase=phase, started=started
        )
        stop.share(cluster.any_of)  # the gang stops after the same step
    try:
        yield Gang(rank, world_size, attempt, cluster, job_checkpoint_dir)
    finally:
        if cluster is not None:
            cluster.close()
