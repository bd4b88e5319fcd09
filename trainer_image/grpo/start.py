"""Everything before a GRPO run's first iteration: build the models, choose and load the actor's
start (the pretraining trainer's `load_first`: the job's own directory, then actor_checkpoint_path,
then random init, agreed by a data-parallel gang), the reference, the strategy file and the
checkpointer."""

from __future__ import annotations

import logging
import os
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from respawn_protocol.resolve import Resolution
from trainer_image.checkpoint.progress import Progress
from trainer_image.config import ConfigError
from trainer_image.grpo import store as grpo_store
from trainer_image.grpo.config import GrpoConfig, compile_cache_view
from trainer_image.grpo.saving import open_checkpointer
from trainer_image.grpo.strategy import write_grpo_strategy
from trainer_image.training.gang import Gang
from trainer_image.training.report import Reporter
from trainer_image.training.resume import load_first

if TYPE_CHECKING:
    from trainer_image.checkpoint.checkpointer import Checkpointer
    from trainer_image.grpo.backend import GrpoBackend
    from trainer_image.grpo.store import Uploaders
    from trainer_image.training.compile_cache import CompileCache

log = logging.getLogger("trainer_image.grpo")


@dataclass(frozen=True)
class Start:
    backend: GrpoBackend
    progress: Progress
    resolution: Resolution
    fresh: bool  # no training state resumed: random init or the actor's weights only
    checkpointer: Checkpointer | None
    compile_cache: CompileCache | None  # until the first iteration has compiled every graph
    uploaders: Uploaders | None  # with a checkpoint store


def fingerprint(config: GrpoConfig, global_prompts: int) -> int:
    """What a resumed state must have been trained on: the task, the seed and the global batch."""
    g = config.grpo
    text = f"sum:{g.operand_max}:{g.max_completion_length}:{config.seed}:{global_prompts}"
    return zlib.crc32(text.encode())


def begin(config: GrpoConfig, gang: Gang, reporter: Reporter, *, started: float) -> Start:
    """`started`: when the process started (perf_counter), for the import phase."""
    from trainer_image.grpo.backend import GrpoBackend  # MindSpore: the slow import
    from trainer_image.training.compile_cache import CompileCache

    imported = time.perf_counter()
    reporter.phase("import", imported - started)
    g = config.grpo
    total_updates = g.total_steps * g.updates_per_rollout
    backend = GrpoBackend(config, total_updates=total_updates)
    cache = CompileCache.open(
        compile_cache_view(config),
        total_steps=total_updates,
        rank=gang.rank,
        world_size=gang.world_size,
        data_parallel=gang.cluster is not None,
        environ=os.environ,
    )
    built = time.perf_counter()
    grpo_store.before_start(os.environ, config, gang, reporter)
    progress, resolution, fresh = _load_actor(config, gang, backend)
    _reference(config, gang, backend, fresh=fresh)
    write_grpo_strategy(config, rank=gang.rank, world_size=gang.world_size, backend=backend)
    reporter.phase("load", time.perf_counter() - built)
    uploaders = grpo_store.uploaders(os.environ, config, gang, reporter)
    checkpointer = open_checkpointer(
        config,
        backend,
        gang,
        resolution,
        fresh=fresh,
        reporter=reporter,
        uploader=uploaders.steps if uploaders else None,
    )
    log.info(
        "start: global step %d of %d; import %.2fs, build and load %.2fs",
        progress.global_step,
        g.total_steps,
        imported - started,
        time.perf_counter() - imported,
    )
    return Start(backend, progress, resolution, fresh, checkpointer, cache, uploaders)


def _reference(config: GrpoConfig, gang: Gang, backend: GrpoBackend, *, fresh: bool) -> None:
    from trainer_image.grpo.reference import prepare_reference

    prepare_reference(
        backend,
        save_dir=config.save_dir,
        rank=gang.rank,
        fmt=config.load_ckpt_format,
        ref_checkpoint_path=config.ref_checkpoint_path,
        fresh=fresh,
    )


def _load_actor(config: GrpoConfig, gang: Gang, backend: GrpoBackend) -> tuple[Progress, Resolution, bool]:
    """The actor's start; a fresh start's progress is a new one, a resumed one must be this run's."""
    global_prompts = config.grpo.prompts_per_step * gang.world_size  # ranks alone take disjoint prompts
    source, progress, resolution = load_first(
        backend,
        config.trainer_view(),
        job_checkpoint_dir=gang.job_checkpoint_dir,
        rank=gang.rank,
        world_size=gang.world_size,
        agree=gang.agree,
        barrier=gang.barrier,
        global_batch_size=global_prompts,
    )
    fresh = resolution.random_init or source.resume_training is False
    expected = fingerprint(config, global_prompts)
    if fresh:
        return Progress(dataset_fingerprint=expected, global_batch_size=global_prompts), resolution, True
    if progress.dataset_fingerprint != expected:
        raise ConfigError(
            f"{resolution.files.get(gang.rank)} was trained on another task, seed or global batch than "
            "this config's; GRPO resumes only the same run (resume_training: False starts from its weights)"
        )
    return progress, resolution, False
