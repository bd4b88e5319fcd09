"""The training loop of one rank: check, join the gang, build, load the start, step, log, checkpoint,
stop on request.

`run` fails fast on what it can tell before the slow imports, joins the gang's cluster (data
parallel), and trains: `_start` builds the data stream and the backend, loads the start
(resume.py) and opens the checkpointer and the step log into a `_Run`; `_steps` runs one `_step`
per batch until the data ends or a stop is requested.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from respawn_protocol import contract
from respawn_protocol.resolve import Check, Resolution
from respawn_protocol.steplog import StepLog
from trainer_image.checkpoint.confine import check_output_dir, open_step_log
from trainer_image.checkpoint.progress import Progress
from trainer_image.config import ConfigError, TrainerConfig
from trainer_image.training import loss_monitor, preflight, storesync
from trainer_image.training.gang import Gang, Outcome, joined
from trainer_image.training.report import Reporter
from trainer_image.training.resume import (
    Resolver,
    continue_progress,
    load_first,
    resizes,
    resolve_start,
    resumed_from,
)
from trainer_image.training.stop import StopRequest

if TYPE_CHECKING:
    from trainer_image.checkpoint.checkpointer import Checkpointer
    from trainer_image.checkpoint.store.upload import Uploader
    from trainer_image.training.backend import Backend, StepResult
    from trainer_image.training.compile_cache import CompileCache
    from trainer_image.training.data import DataStream

log = logging.getLogger("trainer_image")


@dataclass
class _Run:
    """One start of one rank: built before the first step, read and advanced by every step."""

    config: TrainerConfig
    gang: Gang
    stream: DataStream
    backend: Backend
    progress: Progress
    resumed_from: dict[str, Any] | None
    checkpointer: Checkpointer | None
    save_every: int  # checkpoint every this many global steps (with a checkpointer)
    steplog: StepLog
    started: float  # perf_counter when the process started training
    epochs: int  # epochs of the current dataset still to run
    end: int  # the current dataset's data step at which they are done
    saved_at: int  # global step of the last committed checkpoint (the load counts as one)
    reporter: Reporter
    first_step: bool = True  # the next step is this start's first
    copy_waited_before: float = 0.0  # backend.copy_waited at the last save
    compile_cache: CompileCache | None = None  # until the first step has compiled every graph
    uploader: Uploader | None = None  # with a checkpoint store

    @property
    def finished(self) -> bool:
        return self.progress.data_step >= self.end


def run(
    config: TrainerConfig,
    *,
    rank: int,
    world_size: int,
    stop: StopRequest,
    attempt: int | None = None,
    job_checkpoint_dir: Path | None = None,
    reporter: Reporter | None = None,
) -> Outcome:
    started = time.perf_counter()
    reporter = reporter or Reporter(rank=rank, attempt=attempt, send=None)
    _check_before_import(config, world_size=world_size, rank=rank, job_checkpoint_dir=job_checkpoint_dir)
    preflight.check_directory(
        Path(config.output_dir),
        rank=rank,
        world_size=world_size,
        attempt=attempt,
        environ=os.environ,
        defer_shared=config.use_parallel and bool(os.environ.get(contract.STORE_ENDPOINT)),
    )
    with joined(
        config,
        rank=rank,
        world_size=world_size,
        attempt=attempt,
        job_checkpoint_dir=job_checkpoint_dir,
        stop=stop,
        phase=reporter.phase,
        started=started,
    ) as gang:
        return _train(config, gang, stop, started=started, reporter=reporter)


def _check_before_import(
    config: TrainerConfig, *, rank: int, world_size: int, job_checkpoint_dir: Path | None
) -> None:
    """Resolve before the slow imports: a bad name, a world-size change without auto_trans_ckpt or
    a symlinked folder in output_dir fails in a fraction of a second, having touched nothing."""
    check_output_dir(Path(config.output_dir), rank)
    _, early = resolve_start(
        config, job_checkpoint_dir, rank=rank, world_size=world_size, check=Check.SIZE, quiet=True
    )
    if resizes(early, world_size) and world_size > 1 and not config.use_parallel:
        raise ConfigError(
            f"auto_trans_ckpt: loading a {early.world_size}-rank checkpoint on {world_size} ranks "
            "needs use_parallel (ranks that train alone hold different weights)"
        )
    if config.remove_redundancy and world_size > 1 and not config.use_parallel:
        raise ConfigError(
            "remove_redundancy: needs use_parallel (ranks that train alone hold different weights)"
        )


def _train(
    config: TrainerConfig,
    gang: Gang,
    stop: StopRequest,
    *,
    started: float,
    reporter: Reporter,
) -> Outcome:
    state = _start(config, gang, started=started, reporter=reporter)
    try:
        _steps(state, stop)
        if state.checkpointer is not None:
            state.checkpointer.wait()
    finally:
        storesync.close(state.uploader, os.environ)  # bounded: the commits made go to the store
        state.steplog.close()
        if state.compile_cache is not None:
            state.compile_cache.close()
    status: Literal["completed", "stopped"] = "completed" if state.finished else "stopped"
    log.info("%s at global step %d", status, state.progress.global_step)
    return Outcome(
        status, state.progress.global_step, state.saved_at == state.progress.global_step, state.resumed_from
    )


# ------------------------------------------------------------------------------------------------ start


def _start(config: TrainerConfig, gang: Gang, *, started: float, reporter: Reporter) -> _Run:
    """Everything before the first step: build the stream and the backend, load the start, open the
    checkpointer and the step log."""
    from trainer_image.training.backend import Backend  # MindSpore: the slow import
    from trainer_image.training.compile_cache import CompileCache
    from trainer_image.training.data import build_stream

    imported = time.perf_counter()
    reporter.phase("import", imported - started)
    stream = build_stream(config, rank=gang.rank, world_size=gang.world_size)
    epochs = config.runner_config.epochs
    total_steps = config.lr_schedule.total_steps
    total_steps = total_steps if total_steps > 0 else epochs * stream.steps_per_epoch
    backend = Backend(config, total_steps=total_steps)
    cache = CompileCache.open(
        config,
        total_steps=total_steps,
        rank=gang.rank,
        world_size=gang.world_size,
        data_parallel=gang.cluster is not None,
        environ=os.environ,
    )
    saved = _saved_parameters(backend, config, gang)
    shared = storesync.output_shared(os.environ, config, gang)
    preflight.check_model_space(config, gang, backend, saved, shared=shared)
    built = time.perf_counter()

    own = storesync.before_resume(os.environ, config, gang, reporter, shared=shared)
    try:
        # From here on `config` says what was loaded: the job's checkpoint directory or the user's source.
        config, progress, resolution = _resume(config, gang, stream, backend, saved, own)
    finally:
        if own is not None:
            own.close()
    loaded_at = time.perf_counter()
    reporter.phase("load", loaded_at - built)
    state = _open(config, gang, stream, backend, progress, resolution, started=started, reporter=reporter)
    state.compile_cache = cache
    log.info(
        "start: global step %d, %d steps to go; import %.2fs, build %.2fs, load %.2fs",
        progress.global_step,
        max(0, state.end - progress.data_step),
        imported - started,
        built - imported,
        loaded_at - built,
    )
    return state


def _saved_parameters(backend: Backend, config: TrainerConfig, gang: Gang) -> set[str]:
    """The parameters this rank's checkpoints hold: all, or its share with remove_redundancy."""
    if gang.cluster is not None and config.remove_redundancy:
        owners = backend.remove_redundancy(gang.rank, gang.world_size)
        return {name for name, owner in owners.items() if owner == gang.rank}
    return {p.name for p in backend.cell.get_parameters()}


def _resume(
    config: TrainerConfig,
    gang: Gang,
    stream: DataStream,
    backend: Backend,
    saved: set[str],
    own: Resolver | None,
) -> tuple[TrainerConfig, Progress, Resolution]:
    """Load the start (agreed with the gang) and restate its position for this start; the config
    returned has the `load_checkpoint` / `resume_training` of the source it loaded."""
    from trainer_image.checkpoint.merge import write_strategy

    global_batch = config.runner_config.batch_size * gang.data_parallel_ranks  # samples per step
    config, progress, resolution = load_first(
        backend,
        config,
        job_checkpoint_dir=gang.job_checkpoint_dir,
        rank=gang.rank,
        world_size=gang.world_size,
        agree=gang.agree,
        barrier=gang.barrier,
        global_batch_size=global_batch,
        own=own,
    )
    if gang.cluster is not None:
        # Only now: a resized gang must not overwrite the strategy of the gang whose step it merges.
        write_strategy(
            Path(config.output_dir),
            rank=gang.rank,
            world_size=gang.world_size,
            saved=saved,
            batch_size=config.runner_config.batch_size,
            remove_redundancy=config.remove_redundancy,
        )
    progress = continue_progress(
        progress,
        global_batch=global_batch,
        fingerprint=stream.fingerprint,
        steps_per_epoch=stream.steps_per_epoch,
        weights_only=config.resume_training is False,
    )
    return config, progress, resolution


def _open(
    config: TrainerConfig,
    gang: Gang,
    stream: DataStream,
    backend: Backend,
    progress: Progress,
    resolution: Resolution,
    *,
    started: float,
    reporter: Reporter,
) -> _Run:
    """The run from its loaded start: the checkpointer (if configured) and the step log opened."""
    output_dir = Path(config.output_dir)
    monitor = config.checkpoint_monitor
    uploader = storesync.uploader(os.environ, config, gang, reporter)
    checkpointer = storesync.checkpointer(config, gang, backend, resolution, reporter, uploader)
    epochs = config.runner_config.epochs - progress.epoch_base
    reporter.resumed(_job_step(resolution, gang))
    return _Run(
        config=config,
        gang=gang,
        stream=stream,
        backend=backend,
        progress=progress,
        resumed_from=resumed_from(resolution, progress, rank=gang.rank, world_size=gang.world_size),
        checkpointer=checkpointer,
        save_every=monitor.save_checkpoint_steps if monitor is not None else 0,
        steplog=open_step_log(output_dir, gang.rank),
        started=started,
        epochs=epochs,
        end=epochs * stream.steps_per_epoch,
        saved_at=progress.global_step,
        reporter=reporter,
        uploader=uploader,
    )


def _job_step(resolution: Resolution, gang: Gang) -> int | None:
    """The global step of the job's own checkpoint this start resumes (as saved), for the controller's
    status.resumedFromStep; None for random init or a start from the user's load_checkpoint."""
    job_dir = gang.job_checkpoint_dir
    if resolution.random_init or job_dir is None:
        return None
    mine = all(job_dir in path.parents for path in resolution.files.values())
    return resolution.global_step if mine else None


# ------------------------------------------------------------------------------------------------ steps


def _steps(state: _Run, stop: StopRequest) -> None:
    """Step through the rest of the data; no step starts after a stop is requested, and the last
    finished step is committed even when the request came between steps (after `_step`'s check)."""
    for batch in state.stream.batches(start_step=state.progress.data_step, epochs=state.epochs):
        if not stop.begin_step():
            break
        _step(state, batch, stop)
        if stop.requested:
            break
    if stop.requested and state.checkpointer is not None and state.saved_at != state.progress.global_step:
        state.checkpointer.save(state.progress)
        state.saved_at = state.progress.global_step


def _step(state: _Run, batch: np.ndarray, stop: StopRequest) -> None:
    """One optimizer step: run it, count it, log it, and commit a checkpoint when one is due (every
    `save_every` global steps, after the last step, and on a stop request)."""
    t0 = time.perf_counter()
    progress = state.progress
    keep = _keep_mask(state.config, batch.shape[0], progress.global_step, state.gang)
    result = state.backend.step(batch, keep)
    stop.end_step()
    progress.advance(steps_per_epoch=state.stream.steps_per_epoch)
    record = _step_record(state, result, t0)
    state.steplog.write(record)
    loss_monitor.print_loss(state.config, record)
    state.reporter.stepped(progress.global_step, time.perf_counter() - t0)
    if state.compile_cache is not None:  # the first step compiled every graph
        state.compile_cache.finish()
        state.compile_cache = None
    if state.checkpointer is not None and (
        progress.global_step % state.save_every == 0 or state.finished or stop.requested
    ):
        saving, waited = time.perf_counter(), state.backend.copy_waited
        state.checkpointer.save(progress)
        state.saved_at = progress.global_step
        # The save call, plus what steps since the last save waited for its snapshot copy.
        state.reporter.saved(time.perf_counter() - saving + waited - state.copy_waited_before)
        state.copy_waited_before = state.backend.copy_waited


def _step_record(state: _Run, result: StepResult, t0: float) -> dict[str, Any]:
    """The step's line in steps.jsonl; the first line of a start also says where it resumed from."""
    progress = state.progress
    record: dict[str, Any] = {
        "global_step": progress.global_step,
        "epoch": progress.epoch,
        "step": progress.step,
        "loss": float(result.loss),
        "loss_bits": f"{int(np.float32(result.loss).view(np.uint32)):08x}",
        "lr": result.lr,
        "loss_scale": result.loss_scale,
        "overflow": result.overflow,
        "step_time": round(time.perf_counter() - t0, 6),
        "time": round(time.time(), 3),  # wall clock: `respawn plot --x time` shows the downtime
    }
    if state.first_step:
        record["resumed_from"] = state.resumed_from
        record["startup_seconds"] = round(t0 - state.started, 3)
        state.first_step = False
    return record


def _keep_mask(config: TrainerConfig, rows: int, global_step: int, gang: Gang) -> Any:
    """Dropout keep-mask for this rank's rows. Data-parallel ranks cut theirs from the mask of the
    whole global batch (rank r holds rows r, r + N, ... as the sharded sampler interleaves them), so
    the masks, like the samples, do not depend on how many ranks share a global batch."""
    from trainer_image.training.model import dropout_keep

    if gang.cluster is None:
        return dropout_keep(config.model, rows, config.seed, global_step)
    world_size = gang.world_size
    keep = dropout_keep(config.model, rows * world_size, config.seed, global_step)
    if keep is None:
        return None
    axis = 2 if config.model.type == "llama" else 0  # the batch axis of model.dropout_keep's shapes
    return np.ascontiguousarray(np.take(keep, np.arange(gang.rank, rows * world_size, world_size), axis=axis))
