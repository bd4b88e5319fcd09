"""The gang's agreement on one resume step (resume.load_start with an `agree` collective), no MindSpore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from respawn_protocol.layout import StepKey
from trainer_image.checkpoint.progress import Progress
from trainer_image.config import parse_config
from trainer_image.training.parallel import split_owners
from trainer_image.training.resume import load_start


class FakeBackend:
    def __init__(self) -> None:
        self.loaded: list[tuple[Path, tuple[Path, ...]]] = []

    def load(
        self, path: Path, *, weights_only: bool, siblings: tuple[Path, ...] = (), global_batch_size: int = 0
    ) -> Progress:
        self.loaded.append((path, siblings))
        return Progress(global_step=int(path.stem.rsplit("_", 1)[1]))


def checkpoints(root: Path, steps: list[int], world: int = 2) -> None:
    for rank in range(world):
        d = root / f"rank_{rank}"
        d.mkdir(parents=True)
        for step in steps:
            (d / f"tiny_rank_{rank}-1_{step}.ckpt").write_bytes(b"weights")


def config(root: Path) -> Any:
    return parse_config(
        {"load_checkpoint": str(root), "resume_training": True, "output_dir": str(root.parent)}
    )


def test_ranks_take_the_oldest_answer(tmp_path: Path) -> None:
    root = tmp_path / "checkpoint"
    checkpoints(root, [1, 2, 3])
    asked: list[StepKey | None] = []

    def agree(key: StepKey | None) -> tuple[StepKey | None, bool]:
        asked.append(key)
        return StepKey(1, 2), len(asked) > 1  # another rank could only vouch for step 2

    backend = FakeBackend()
    progress, res = load_start(backend, config(root), rank=1, world_size=2, agree=agree)
    assert asked == [StepKey(1, 3), StepKey(1, 2)]  # asked again until everyone agrees
    assert res.key == StepKey(1, 2) and progress.global_step == 2
    assert backend.loaded == [
        (root / "rank_1" / "tiny_rank_1-1_2.ckpt", (root / "rank_0" / "tiny_rank_0-1_2.ckpt",))
    ]


def test_one_rank_with_nothing_makes_the_gang_start_fresh(tmp_path: Path) -> None:
    root = tmp_path / "checkpoint"
    checkpoints(root, [1])
    backend = FakeBackend()
    progress, res = load_start(backend, config(root), rank=0, world_size=2, agree=lambda key: (None, False))
    assert res.random_init and progress == Progress() and backend.loaded == []


def test_parameters_are_split_by_bytes_the_same_way_everywhere() -> None:
    sizes = {"a": 100, "b": 60, "c": 50, "d": 10, "e": 10}
    owners = split_owners(sizes, 2)
    assert owners == split_owners(dict(reversed(sizes.items())), 2)
    per_rank = [sum(s for n, s in sizes.items() if owners[n] == r) for r in range(2)]
    assert sorted(per_rank) == [110, 120]
