"""Pretrained start, then auto-resume, without MindSpore.

Under the controller (`RESPAWN_JOB_CHECKPOINT_DIR`) the user's `load_checkpoint` / `resume_training`
apply while the job's own checkpoint directory holds no step complete on every rank (as
`respawn_protocol.resolve` decides); once it holds one, auto-resume from it wins. Without the
variable the user's settings alone apply, as before."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol import contract
from respawn_protocol.layout import StepKey
from respawn_protocol.meta import Meta, Record, meta_path, read_meta
from respawn_protocol.resolve import Check
from trainer_image.checkpoint.progress import Progress
from trainer_image.config import ConfigError, TrainerConfig, parse_config
from trainer_image.trainer import Trainer
from trainer_image.training.resume import load_first, resolve_start

WORLD = 2


def commit(
    root: Path, step: int, *, ranks: range | list[int] = range(WORLD), attempt: int | None = 0
) -> None:
    """Commit step `step` on `ranks` of a `WORLD`-rank gang as the trainer does (file, then meta.json)."""
    for r in ranks:
        d = root / f"rank_{r}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{root.parent.name}_rank_{r}-1_{step}.ckpt"
        path.write_bytes(bytes([r, step]) * 40)
        data = path.read_bytes()
        old = read_meta(d)
        record = Record(
            path.name, 1, step, step, len(data), hashlib.sha256(data).hexdigest(), None, WORLD, attempt
        )
        history = [h for h in (old.checkpoints if old else []) if h.step < step]
        meta_path(d).write_bytes(Meta(1, step, path.name, step, [*history, record]).to_json())


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """The job's own checkpoint directory (output_dir/checkpoint), not created yet."""
    return tmp_path / "job" / "checkpoint"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """Pretrained weights as one file: full weights for every rank."""
    path = tmp_path / "models" / "base-1_10.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"pretrained" * 20)
    return path


@pytest.fixture
def pretrained_run(tmp_path: Path) -> Path:
    """Pretrained checkpoints in the rank_N/ layout (another job's checkpoint directory)."""
    root = tmp_path / "base" / "checkpoint"
    for step in (1, 2, 3):
        commit(root, step)
    return root


def config(job_dir: Path, load_checkpoint: Path | str, resume_training: bool | str = False) -> TrainerConfig:
    return parse_config(
        {
            "output_dir": str(job_dir.parent),
            "load_checkpoint": str(load_checkpoint),
            "resume_training": resume_training,
        }
    )


def start(c: TrainerConfig, job_dir: Path | None) -> tuple[TrainerConfig, Any]:
    return resolve_start(c, job_dir, rank=0, world_size=WORLD, check=Check.DIGEST)


# ------------------------------------------------------------------------------------------ the decision


def test_an_empty_job_directory_starts_from_the_pretrained_weights(job_dir: Path, weights: Path) -> None:
    user = config(job_dir, weights)
    source, res = start(user, job_dir)  # the directory does not exist yet: the first start
    assert source == user and res.source == "file" and res.files == {0: weights, 1: weights}
    for r in range(WORLD):
        (job_dir / f"rank_{r}").mkdir(parents=True)  # empty rank folders are still empty
    source, res = start(user, job_dir)
    assert source == user and res.files[0] == weights


def test_a_complete_job_checkpoint_wins_over_the_pretrained_weights(job_dir: Path, weights: Path) -> None:
    commit(job_dir, 1)
    commit(job_dir, 2)
    source, res = start(config(job_dir, weights), job_dir)
    assert source.load_checkpoint == str(job_dir)
    assert source.resume_training is True  # auto-resume restores everything, whatever the user said
    assert res.key == StepKey(1, 2) and res.files[1] == job_dir / "rank_1" / "job_rank_1-1_2.ckpt"


def test_a_step_on_only_some_ranks_is_no_job_checkpoint(job_dir: Path, weights: Path) -> None:
    commit(job_dir, 1, ranks=[0])  # rank 1 died before it wrote step 1
    source, res = start(config(job_dir, weights), job_dir)
    assert source.load_checkpoint == str(weights) and res.files[0] == weights


def test_files_of_two_attempts_are_no_job_checkpoint(job_dir: Path, weights: Path) -> None:
    """A rank of a new attempt that started from the pretrained weights has written step 1 while the
    other rank still lists an older attempt's step 1: never a job checkpoint."""
    commit(job_dir, 1, ranks=[1], attempt=0)
    commit(job_dir, 1, ranks=[0], attempt=1)
    source, res = start(config(job_dir, weights), job_dir)
    assert source.load_checkpoint == str(weights) and res.files[0] == weights


def test_no_pretrained_weights_and_an_empty_job_directory_is_random_init(job_dir: Path) -> None:
    source, res = start(config(job_dir, ""), job_dir)
    assert res.random_init and source.load_checkpoint == ""
    commit(job_dir, 1, ranks=[0])  # only an incomplete step
    assert start(config(job_dir, ""), job_dir)[1].random_init


def test_a_named_pretrained_step_applies_only_before_the_first_job_checkpoint(
    job_dir: Path, pretrained_run: Path
) -> None:
    user = config(job_dir, pretrained_run, "base_rank_0-1_2.ckpt")
    source, res = start(user, job_dir)
    assert source == user and res.key == StepKey(1, 2)
    assert res.files == {r: pretrained_run / f"rank_{r}" / f"base_rank_{r}-1_2.ckpt" for r in range(WORLD)}
    commit(job_dir, 1)
    source, res = start(user, job_dir)
    assert source.load_checkpoint == str(job_dir) and source.resume_training is True
    assert res.key == StepKey(1, 1) and res.files[0].parent.parent == job_dir


def test_pretrained_weights_are_needed_only_while_the_job_has_no_checkpoint(
    job_dir: Path, tmp_path: Path
) -> None:
    gone = tmp_path / "models" / "deleted.ckpt"
    with pytest.raises(ConfigError, match="does not exist"):
        start(config(job_dir, gone), job_dir)
    commit(job_dir, 1)
    source, res = start(config(job_dir, gone), job_dir)
    assert source.load_checkpoint == str(job_dir) and res.key == StepKey(1, 1)


def test_without_the_controller_the_users_settings_alone_apply(
    job_dir: Path, weights: Path, pretrained_run: Path
) -> None:
    commit(job_dir, 1)
    user = config(job_dir, weights)
    source, res = start(user, None)
    assert source is user and res.files[0] == weights  # as today: load_checkpoint is what loads
    own = config(job_dir, job_dir, True)
    assert start(own, None)[1].key == StepKey(1, 1)
    assert start(own, job_dir)[1].key == StepKey(1, 1)  # the old controller convention, set by hand


# ---------------------------------------------------------------------------------- loading, with a gang


class FakeBackend:
    def __init__(self) -> None:
        self.loaded: list[tuple[Path, bool]] = []

    def load(
        self, path: Path, *, weights_only: bool, siblings: tuple[Path, ...] = (), global_batch_size: int = 0
    ) -> Progress | None:
        self.loaded.append((path, weights_only))
        return None if weights_only else Progress(global_step=int(path.stem.rsplit("_", 1)[1]))


def test_pretrained_weights_load_as_weights_only_and_the_job_checkpoint_fully(
    job_dir: Path, weights: Path
) -> None:
    backend = FakeBackend()
    source, progress, res = load_first(
        backend, config(job_dir, weights), job_checkpoint_dir=job_dir, rank=1, world_size=WORLD
    )
    assert backend.loaded == [(weights, True)] and progress == Progress()
    assert source.resume_training is False and res.files[1] == weights

    commit(job_dir, 3)
    backend = FakeBackend()
    source, progress, res = load_first(
        backend, config(job_dir, weights), job_checkpoint_dir=job_dir, rank=1, world_size=WORLD
    )
    assert backend.loaded == [(job_dir / "rank_1" / "job_rank_1-1_3.ckpt", False)]
    assert source.resume_training is True and progress.global_step == 3


def test_the_gang_starts_from_the_pretrained_weights_if_any_rank_finds_no_job_checkpoint(
    job_dir: Path, pretrained_run: Path
) -> None:
    """This rank sees job step 2; another rank found none. Every rank takes the pretrained start,
    agreeing on its step too: the ranks never mix the job's checkpoint with pretrained weights."""
    commit(job_dir, 1)
    commit(job_dir, 2)
    asked: list[StepKey | None] = []

    def agree(key: StepKey | None) -> tuple[StepKey | None, bool]:
        asked.append(key)
        return (None, False) if len(asked) == 1 else (key, True)

    backend = FakeBackend()
    source, _, res = load_first(
        backend,
        config(job_dir, pretrained_run, True),
        job_checkpoint_dir=job_dir,
        rank=0,
        world_size=WORLD,
        agree=agree,
    )
    assert asked == [StepKey(1, 2), StepKey(1, 3)]  # the job's step, then the pretrained one
    assert source.load_checkpoint == str(pretrained_run)
    assert backend.loaded == [(pretrained_run / "rank_0" / "base_rank_0-1_3.ckpt", False)]
    assert res.key == StepKey(1, 3)


def test_the_gang_resumes_from_the_job_checkpoint_when_every_rank_found_it(
    job_dir: Path, weights: Path
) -> None:
    commit(job_dir, 1)
    asked: list[StepKey | None] = []

    def agree(key: StepKey | None) -> tuple[StepKey | None, bool]:
        asked.append(key)
        return key, True

    backend = FakeBackend()
    source, progress, _ = load_first(
        backend, config(job_dir, weights), job_checkpoint_dir=job_dir, rank=0, world_size=WORLD, agree=agree
    )
    assert asked == [StepKey(1, 1)] and source.load_checkpoint == str(job_dir)
    assert backend.loaded == [(job_dir / "rank_0" / "job_rank_0-1_1.ckpt", False)]
    assert progress.global_step == 1


# ------------------------------------------------------------------------------------------ environment


def test_the_trainer_takes_the_job_directory_from_the_environment(tmp_path: Path, weights: Path) -> None:
    out = tmp_path / "job"
    yaml = {"load_checkpoint": str(weights), "resume_training": False}
    env = {contract.OUTPUT_DIR: str(out), contract.JOB_CHECKPOINT_DIR: str(out / "checkpoint")}
    t = Trainer(yaml, environ=env)
    assert t.job_checkpoint_dir == out / "checkpoint"
    assert t.config.load_checkpoint == str(weights) and t.config.resume_training is False
    assert Trainer(yaml, environ={contract.OUTPUT_DIR: str(out)}).job_checkpoint_dir is None


def test_a_job_directory_the_trainer_does_not_write_is_refused(tmp_path: Path) -> None:
    env = {
        contract.OUTPUT_DIR: str(tmp_path / "job"),
        contract.JOB_CHECKPOINT_DIR: str(tmp_path / "elsewhere" / "checkpoint"),
    }
    with pytest.raises(ConfigError, match="RESPAWN_JOB_CHECKPOINT_DIR"):
        Trainer({}, environ=env)
