"""One rank of a GRPO run: check, join the gang, build, choose the start, then iterate: a rollout
(G completions per prompt, rewards, group-normalised advantages, the old and reference
log-probabilities) and `updates_per_rollout` optimizer updates on it, logged and checkpointed.

An iteration is one global step. Everything it draws is a function of (seed, global step, rank):
the prompts (task.py) and the sampling uniforms (algo.py). The checkpoint of a step holds the
policy, the optimizer (its own file) and the progress, so a start resumed from it runs the next
iterations exactly as the uninterrupted run did.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from respawn_protocol.layout import rank_dir
from respawn_protocol.meta import meta_path
from respawn_protocol.resolve import Check, Resolution
from trainer_image.checkpoint.confine import check_output_dir, open_step_log
from trainer_image.checkpoint.progress import Progress
from trainer_image.config import ConfigError
from trainer_image.grpo.config import GrpoConfig
from trainer_image.grpo.rollout import rollout
from trainer_image.grpo.saving import remove_orphan_optimizer_files
from trainer_image.grpo.start import begin
from trainer_image.grpo.task import steps_per_epoch
from trainer_image.training.gang import Gang, joined
from trainer_image.training.report import Reporter
from trainer_image.training.resume import resolve_start, resumed_from
from trainer_image.training.stop import StopRequest

if TYPE_CHECKING:
    from trainer_image.checkpoint.checkpointer import Checkpointer
    from trainer_image.grpo.backend import GrpoBackend
    from trainer_image.grpo.store import Uploaders
    from trainer_image.training.compile_cache import CompileCache

log = logging.getLogger("trainer_image.grpo")


@dataclass
class Timings:
    """Seconds spent per phase by this start, and what they produced (scripts/bench_grpo.py)."""

    rollout: float = 0.0
    update: float = 0.0
    save: float = 0.0
    iterations: int = 0


@dataclass(frozen=True)
class GrpoOutcome:
    status: Literal["completed", "stopped"]
    global_step: int
    checkpointed: bool
    resumed_from: dict[str, Any] | None
    timings: Timings = field(default_factory=Timings)


def run(
    config: GrpoConfig,
    *,
    rank: int,
    world_size: int,
    stop: StopRequest,
    attempt: int | None = None,
    job_checkpoint_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> GrpoOutcome:
    started = time.perf_counter()
    reporter = reporter or Reporter(rank=rank, attempt=attempt, send=None)
    check_before_import(config, rank=rank, world_size=world_size, job_checkpoint_dir=job_checkpoint_dir)
    with joined(
        config.trainer_view(),
        rank=rank,
        world_size=world_size,
        attempt=attempt,
        job_checkpoint_dir=job_checkpoint_dir,
        stop=stop,
        phase=reporter.phase,
        started=started,
    ) as gang:
        return _Run.start(config, gang, reporter, started).train(stop)


def check_before_import(
    config: GrpoConfig, *, rank: int, world_size: int, job_checkpoint_dir: Path | None
) -> None:
    """What fails before MindSpore's import: a symlinked folder, an unresolvable actor checkpoint,
    and (the seed's first trouble) `resume_training` from an actor path that holds nothing to
    resume, naming where it looked for meta.json."""
    check_output_dir(config.save_dir, rank)
    view = config.trainer_view()
    _, early = resolve_start(
        view, job_checkpoint_dir, rank=rank, world_size=world_size, check=Check.SIZE, quiet=True
    )
    actor = config.actor_checkpoint_path
    if early.random_init and config.resume_training and actor and Path(actor).is_dir():
        looked = [str(meta_path(rank_dir(Path(actor), r))) for r in range(world_size)]
        raise ConfigError(
            f"resume_training: actor_checkpoint_path {actor} holds no step complete on every rank; "
            f"looked for {', '.join(looked)} (missing) and the checkpoint files beside them"
        )


@dataclass
class _Run:
    config: GrpoConfig
    rank: int  # also its slot in the global batch of prompts
    data_ranks: int  # ranks sharing a global batch
    backend: GrpoBackend
    progress: Progress
    resumed_from: dict[str, Any] | None
    checkpointer: Checkpointer | None
    reporter: Reporter
    started: float
    timings: Timings = field(default_factory=Timings)
    saved_at: int = 0
    first_step: bool = True
    compile_cache: CompileCache | None = None  # until the first iteration has compiled every graph
    uploaders: Uploaders | None = None  # with a checkpoint store: flushed (bounded) at the end

    @classmethod
    def start(cls, config: GrpoConfig, gang: Gang, reporter: Reporter, started: float) -> _Run:
        s = begin(config, gang, reporter, started=started)
        reporter.resumed(_job_step(s.resolution, gang.job_checkpoint_dir, s.fresh))
        return cls(
            config=config,
            rank=gang.rank,
            data_ranks=gang.world_size,
            backend=s.backend,
            progress=s.progress,
            # None for random init; the actor's weights name their file, at global step 0
            resumed_from=resumed_from(s.resolution, s.progress, rank=gang.rank, world_size=gang.world_size),
            checkpointer=s.checkpointer,
            reporter=reporter,
            started=started,
            saved_at=s.progress.global_step,
            compile_cache=s.compile_cache,
            uploaders=s.uploaders,
        )

    # ---------------------------------------------------------------------------------------- the loop

    @property
    def finished(self) -> bool:
        return self.progress.global_step >= self.config.grpo.total_steps

    def train(self, stop: StopRequest) -> GrpoOutcome:
        steplog = open_step_log(self.config.save_dir, self.rank)
        try:
            while not self.finished and stop.begin_step():
                record = self.iterate(stop)
                if self.compile_cache is not None:  # the first iteration compiled every graph
                    self.compile_cache.finish()
                    self.compile_cache = None
                steplog.write(record)
                self.reporter.stepped(self.progress.global_step, record["step_time"])
                if self.due(stop):
                    self.save()
                if stop.requested:
                    break
            if (
                stop.requested
                and self.checkpointer is not None
                and self.saved_at != self.progress.global_step
            ):
                self.save()
        finally:
            if self.uploaders is not None:
                self.uploaders.close(os.environ)  # bounded: the commits made go to the store
            steplog.close()
            if self.compile_cache is not None:
                self.compile_cache.close()
        status: Literal["completed", "stopped"] = "completed" if self.finished else "stopped"
        log.info("%s at global step %d", status, self.progress.global_step)
        return GrpoOutcome(
            status,
            self.progress.global_step,
            self.saved_at == self.progress.global_step,
            self.resumed_from,
            self.timings,
        )

    def iterate(self, stop: StopRequest) -> dict[str, Any]:
        g = self.config.grpo
        t0 = time.perf_counter()
        batch = rollout(
            self.backend,
            self.config,
            global_step=self.progress.global_step,
            rank=self.rank,
            data_ranks=self.data_ranks,
        )
        t1 = time.perf_counter()
        losses, kls, lrs = [], [], []
        for _ in range(g.updates_per_rollout):
            loss, kl, lr = self.backend.update(
                batch.tokens, batch.mask, batch.old, batch.ref, batch.advantages
            )
            losses.append(loss)
            kls.append(kl)
            lrs.append(lr)
        t2 = time.perf_counter()
        stop.end_step()
        self.progress.advance(
            steps_per_epoch=steps_per_epoch(self.config.task, g.prompts_per_step * self.data_ranks)
        )
        self.timings.rollout += t1 - t0
        self.timings.update += t2 - t1
        self.timings.iterations += 1
        record = step_record(self.progress, losses, kls, batch.rewards)
        record.update(
            lr=lrs[0],
            rollout_time=round(t1 - t0, 6),
            update_time=round(t2 - t1, 6),
            step_time=round(t2 - t0, 6),
            time=round(time.time(), 3),
        )
        if self.first_step:
            record["resumed_from"] = self.resumed_from
            record["startup_seconds"] = round(t0 - self.started, 3)
            self.first_step = False
        return record

    def due(self, stop: StopRequest) -> bool:
        if self.checkpointer is None:
            return False
        every = self.checkpointer.monitor.save_checkpoint_steps
        return self.progress.global_step % every == 0 or self.finished or stop.requested

    def save(self) -> None:
        assert self.checkpointer is not None
        t0 = time.perf_counter()
        self.checkpointer.save(self.progress)
        remove_orphan_optimizer_files(self.checkpointer.dir)
        self.saved_at = self.progress.global_step
        elapsed = time.perf_counter() - t0
        self.timings.save += elapsed
        self.reporter.saved(elapsed)


def step_record(
    progress: Progress, losses: list[np.float32], kls: list[np.float32], rewards: np.ndarray
) -> dict[str, Any]:
    """The iteration's step-log line: loss and kl averaged over its updates, the rollout's mean
    reward, each also as its float32 bit pattern for bitwise comparison."""
    loss = np.mean(np.array(losses, dtype=np.float32), dtype=np.float32)
    kl = np.mean(np.array(kls, dtype=np.float32), dtype=np.float32)
    reward = np.mean(rewards, dtype=np.float32)
    return {
        "global_step": progress.global_step,
        "epoch": progress.epoch,
        "step": progress.step,
        "loss": float(loss),
        "loss_bits": _bits(loss),
        "reward_mean": float(reward),
        "reward_bits": _bits(reward),
        "kl": float(kl),
        "kl_bits": _bits(kl),
    }


def _job_step(resolution: Resolution, job_dir: Path | None, fresh: bool) -> int | None:
    if fresh or job_dir is None:
        return None
    mine = all(job_dir in path.parents for path in resolution.files.values())
    return resolution.global_step if mine else None


def _bits(value: np.float32) -> str:
    return f"{int(np.float32(value).view(np.uint32)):08x}"
