"""One rank of a GRPO run: check, join the gang, build, choose the start, then iterate: a rollout
(G completions per prompt, rewards, group-normalised advantages, the old and reference
log-probabilities) and `updates_per_rollout` optimizer updates on it, logged and checkpointed.

An iteration is one global step. Everything it draws is a function of (seed, global step, rank):
the prompts (task.py) and the sampling uniforms (algo.py). The checkpoint of a step holds the
policy, the optimizer (its own file) and the progress, so a start resumed from it runs the next
iterations exactly as the uninterrupted run did.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from respawn_protocol.layout import CheckpointName, StepKey, rank_dir
from respawn_protocol.meta import meta_path
from respawn_protocol.resolve import Check, Resolution
from trainer_image.checkpoint.confine import check_output_dir, open_step_log
from trainer_image.checkpoint.progress import Progress
from trainer_image.config import ConfigError
from trainer_image.grpo.algo import group_advantages, sample, sampling_rng
from trainer_image.grpo.config import GrpoConfig, compile_cache_view
from trainer_image.grpo.strategy import write_grpo_strategy
from trainer_image.grpo.task import PROMPT_LENGTH, prompt_indices, steps_per_epoch
from trainer_image.training.report import Reporter
from trainer_image.training.resume import lineage_parent, load_first, resolve_start, resumed_from
from trainer_image.training.stop import StopRequest

if TYPE_CHECKING:
    from trainer_image.checkpoint.checkpointer import Checkpointer
    from trainer_image.grpo.backend import GrpoBackend
    from trainer_image.training.compile_cache import CompileCache
    from trainer_image.training.parallel import Cluster

log = logging.getLogger("trainer_image.grpo")


@dataclass
class Timings:
    """Seconds spent per phase by this start, and what they produced (scripts/bench_grpo.py)."""

    rollout: float = 0.0
    update: float = 0.0
    save: float = 0.0
    iterations: int = 0
    completions: int = 0  # sampled (prompts x G per iteration)
    updates: int = 0


@dataclass(frozen=True)
class GrpoOutcome:
    status: Literal["completed", "stopped"]
    global_step: int
    checkpointed: bool
    resumed_from: dict[str, Any] | None
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class Rollout:
    tokens: np.ndarray  # (n, seq) int32: prompts and sampled completions
    mask: np.ndarray  # (n, seq - 1) float32: 1 where a log-probability is of a completion byte
    old: np.ndarray  # (n, seq - 1) the sampling policy's per-token log-probabilities
    ref: np.ndarray  # (n, seq - 1) the reference's
    rewards: np.ndarray  # (n,) float32
    advantages: np.ndarray  # (n,) float32


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
    cluster: Cluster | None = None
    if config.use_parallel and world_size > 1:
        from trainer_image.training.parallel import Cluster

        cluster = Cluster.join(
            config.trainer_view(),
            rank=rank,
            world_size=world_size,
            environ=os.environ,
            phase=reporter.phase,
            started=started,
        )
        stop.share(cluster.any_of)
    try:
        return _Run.start(
            config, rank, world_size, attempt, cluster, job_checkpoint_dir, reporter, started
        ).train(stop)
    finally:
        if cluster is not None:
            cluster.close()


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


def fingerprint(config: GrpoConfig, prompts_per_step: int) -> int:
    """What a resumed state must have been trained on: the task, the seed and the global batch."""
    g = config.grpo
    text = f"sum:{g.operand_max}:{g.max_completion_length}:{config.seed}:{prompts_per_step}"
    return zlib.crc32(text.encode())


@dataclass
class _Run:
    config: GrpoConfig
    rank: int
    data_rank: int  # this rank's slot in the global batch
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

    @classmethod
    def start(
        cls,
        config: GrpoConfig,
        rank: int,
        world_size: int,
        attempt: int | None,
        cluster: Cluster | None,
        job_checkpoint_dir: Path | None,
        reporter: Reporter,
        started: float,
    ) -> _Run:
        from trainer_image.grpo.backend import GrpoBackend  # MindSpore: the slow import
        from trainer_image.grpo.reference import prepare_reference

        imported = time.perf_counter()
        reporter.phase("import", imported - started)
        g = config.grpo
        data_ranks = world_size  # ranks that train alone still take disjoint prompts
        global_prompts = g.prompts_per_step * data_ranks
        from trainer_image.training.compile_cache import CompileCache

        total_updates = g.total_steps * g.updates_per_rollout
        backend = GrpoBackend(config, total_updates=total_updates)
        cache = CompileCache.open(
            compile_cache_view(config),
            total_steps=total_updates,
            rank=rank,
            world_size=world_size,
            data_parallel=cluster is not None,
            environ=os.environ,
        )
        built = time.perf_counter()
        source, progress, resolution = load_first(
            backend,
            config.trainer_view(),
            job_checkpoint_dir=job_checkpoint_dir,
            rank=rank,
            world_size=world_size,
            agree=None if cluster is None else cluster.agree,
            barrier=None if cluster is None else cluster.barrier,
            global_batch_size=global_prompts,
        )
        fresh = resolution.random_init or source.resume_training is False
        prepare_reference(
            backend,
            save_dir=config.save_dir,
            rank=rank,
            fmt=config.load_ckpt_format,
            ref_checkpoint_path=config.ref_checkpoint_path,
            fresh=fresh,
        )
        expected = fingerprint(config, global_prompts)
        if fresh:
            progress = Progress(dataset_fingerprint=expected, global_batch_size=global_prompts)
        elif progress.dataset_fingerprint != expected:
            raise ConfigError(
                f"{resolution.files.get(rank)} was trained on another task, seed or global batch "
                "than this config's; GRPO resumes only the same run (set resume_training: False to "
                "start from its weights)"
            )
        write_grpo_strategy(config, rank=rank, world_size=world_size, backend=backend)
        reporter.phase("load", time.perf_counter() - built)
        checkpointer = _checkpointer(config, backend, rank, world_size, attempt, resolution, fresh, reporter)
        log.info(
            "start: global step %d of %d; import %.2fs, build and load %.2fs",
            progress.global_step,
            g.total_steps,
            imported - started,
            time.perf_counter() - imported,
        )
        reporter.resumed(_job_step(resolution, job_checkpoint_dir, fresh))
        return cls(
            config=config,
            rank=rank,
            data_rank=rank,
            data_ranks=data_ranks,
            backend=backend,
            progress=progress,
            resumed_from=None
            if fresh
            else resumed_from(resolution, progress, rank=rank, world_size=world_size),
            checkpointer=checkpointer,
            reporter=reporter,
            started=started,
            saved_at=progress.global_step,
            compile_cache=cache,
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
        batch = self.rollout(self.progress.global_step)
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
        self.timings.completions += len(batch.rewards)
        self.timings.updates += g.updates_per_rollout
        loss32 = np.mean(np.array(losses, dtype=np.float32), dtype=np.float32)
        kl32 = np.mean(np.array(kls, dtype=np.float32), dtype=np.float32)
        reward32 = np.mean(batch.rewards, dtype=np.float32)
        record: dict[str, Any] = {
            "global_step": self.progress.global_step,
            "epoch": self.progress.epoch,
            "step": self.progress.step,
            "loss": float(loss32),
            "loss_bits": _bits(loss32),
            "reward_mean": float(reward32),
            "reward_bits": _bits(reward32),
            "kl": float(kl32),
            "kl_bits": _bits(kl32),
            "lr": lrs[0],
            "rollout_time": round(t1 - t0, 6),
            "update_time": round(t2 - t1, 6),
            "step_time": round(t2 - t0, 6),
            "time": round(time.time(), 3),
        }
        if self.first_step:
            record["resumed_from"] = self.resumed_from
            record["startup_seconds"] = round(t0 - self.started, 3)
            self.first_step = False
        return record

    def rollout(self, global_step: int) -> Rollout:
        """Sample G completions per prompt of this iteration, byte by byte, and score them."""
        config, g, task = self.config, self.config.grpo, self.config.task
        prompts, groups, length = g.prompts_per_step, g.num_generations, g.max_completion_length
        indices = prompt_indices(
            task,
            seed=config.seed,
            iteration=global_step,
            batch=prompts * self.data_ranks,
            offset=self.data_rank * prompts,
            count=prompts,
        )
        pairs = task.pairs(indices)
        n = prompts * groups
        tokens = np.zeros((n, config.model.seq_length), dtype=np.int32)
        tokens[:, :PROMPT_LENGTH] = np.repeat(task.prompt_bytes(pairs), groups, axis=0)
        uniforms = sampling_rng(config.seed, global_step, self.rank).random((n, length))
        for j in range(length):
            at = PROMPT_LENGTH + j
            logits = self.backend.logits(tokens)[:, at - 1, :]
            tokens[:, at] = sample(logits, uniforms[:, j], g.temperature)
        completions = tokens[:, PROMPT_LENGTH : PROMPT_LENGTH + length]
        rewards = task.rewards(completions, np.repeat(task.targets(pairs), groups, axis=0))
        mask = np.zeros((n, config.model.seq_length - 1), dtype=np.float32)
        mask[:, PROMPT_LENGTH - 1 : PROMPT_LENGTH - 1 + length] = 1.0
        old, ref = self.backend.logprobs(tokens)
        return Rollout(tokens, mask, old, ref, rewards, group_advantages(rewards, groups))

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


def _checkpointer(
    config: GrpoConfig,
    backend: GrpoBackend,
    rank: int,
    world_size: int,
    attempt: int | None,
    resolution: Resolution,
    fresh: bool,
    reporter: Reporter,
) -> Checkpointer | None:
    from trainer_image.checkpoint.checkpointer import Checkpointer

    monitor = config.checkpoint_monitor
    if monitor is None:
        return None
    checkpointer = Checkpointer(
        backend=backend,
        monitor=dataclasses.replace(monitor, save_network_params=False),
        output_dir=config.save_dir,
        rank=rank,
        world_size=world_size,
        resumed_key=None if fresh else resolution.key,
        attempt=attempt,
        parent=None if fresh else lineage_parent(resolution),
        on_commit=lambda r: reporter.committed(
            step=r.global_step, epoch=r.epoch, file=r.file, attempt=r.attempt
        ),
    )
    fmt = monitor.checkpoint_format

    def target(progress: Progress) -> Path:
        name = CheckpointName(checkpointer.prefix, StepKey(progress.epoch, progress.step), fmt).name
        return checkpointer.dir / name

    backend.optimizer_target = target
    remove_orphan_optimizer_files(checkpointer.dir)
    return checkpointer


def remove_orphan_optimizer_files(directory: Path) -> list[Path]:
    """Optimizer files whose policy file is gone (pruned) or was never published (a crash in
    between): nothing can load them. Run after a commit's prune, and at start."""
    from trainer_image.checkpoint.commit import fsync_dir
    from trainer_image.grpo.backend import OPTIMIZER_TAG

    removed = []
    for entry in os.scandir(directory):
        stem, dot, ext = entry.name.rpartition(".")
        if not dot or ext not in ("ckpt", "safetensors") or not stem.endswith(OPTIMIZER_TAG):
            continue
        policy = directory / f"{stem[: -len(OPTIMIZER_TAG)]}.{ext}"
        if entry.is_file(follow_symlinks=False) and not policy.exists():
            os.unlink(entry.path)
            removed.append(Path(entry.path))
            log.info("pruned %s", entry.path)
    if removed:
        fsync_dir(directory)
    return removed


def _job_step(resolution: Resolution, job_dir: Path | None, fresh: bool) -> int | None:
    if fresh or job_dir is None:
        return None
    mine = all(job_dir in path.parents for path in resolution.files.values())
    return resolution.global_step if mine else None


def _bits(value: np.float32) -> str:
    return f"{int(np.float32(value).view(np.uint32)):08x}"
