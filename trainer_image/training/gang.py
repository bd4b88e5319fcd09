"""A rank's place in its gang, and what a run of the loop ends with (training/loop.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from trainer_image.training.resume import Agree, Barrier

if TYPE_CHECKING:
    from trainer_image.training.parallel import Cluster


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
