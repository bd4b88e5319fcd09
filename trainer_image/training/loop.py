"""The training loop of one rank: resolve, load, step, log, checkpoint, stop on request."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from respawn_protocol.layout import StepKey, checkpoint_root, step_log_path
from respawn_protocol.resolve import Check, Resolution, ResolveError, resolve
from respawn_protocol.steplog import StepLog
from trainer_image.checkpoint.progress import Progress
from trainer_image.checkpoint.rescale import rescale_progress
from trainer_image.config import ConfigError, TrainerConfig
from trainer_image.training.stop import StopRequest

log = logging.getLogger("trainer_image")


@dataclass(frozen=True)
class Outcome:
    status: Literal["completed", "stopped"]
    global_step: int
    checkpointed: bool  # the state at `global_step` is committed (or nothing ran since the load)
    resumed_from: dict[str, Any] | None


def run(
    config: TrainerConfig, *, rank: int, world_size: int, stop: StopRequest, attempt: int | None = None
) -> Outcome:
    started = time.perf_counter()
    # Resolve before the slow imports: a bad name or a world-size change without auto_trans_ckpt
    # fails in a fraction of a second, having touched nothing.
    early = resolve_checkpoint(
        config, rank=rank, world_size=world_size, exclude=set(), check=Check.SIZE, quiet=True
    )
    if _resizes(early, world_size) and world_size > 1 and not config.use_parallel:
        raise ConfigError(
            f"auto_trans_ckpt: loading a {early.world_size}-rank checkpoint on {world_size} ranks "
            "needs use_parallel (ranks that train alone hold different weights)"
        )

    if config.remove_redundancy and world_size > 1 and not config.use_parallel:
        raise ConfigError(
            "remove_redundancy: needs use_parallel (ranks that train alone hold different weights)"
        )
    cluster = None
    if config.use_parallel and world_size > 1:
        from trainer_image.training.parallel import Cluster

        cluster = Cluster.join(config, rank=rank, world_size=world_size, environ=os.environ)
    try:
        return _train(
            config,
            rank=rank,
            world_size=world_size,
            stop=stop,
            cluster=cluster,
            started=started,
            attempt=attempt,
        )
    finally:
        if cluster is not None:
            cluster.close()


def _train(
    config: TrainerConfig,
    *,
    rank: int,
    world_size: int,
    stop: StopRequest,
    cluster: Any,
    started: float,
    attempt: int | None,
) -> Outcome:
    from trainer_image.checkpoint.checkpointer import Checkpointer
    from trainer_image.training.backend import Backend
    from trainer_image.training.data import build_stream

    output_dir = Path(config.output_dir)
    imported = time.perf_counter()
    stream = build_stream(config, rank=rank, world_size=world_size)
    n = stream.steps_per_epoch
    epochs = config.runner_config.epochs
    total_steps = config.lr_schedule.total_steps if config.lr_schedule.total_steps > 0 else epochs * n
    backend = Backend(config, total_steps=total_steps)
    saved = {p.name for p in backend.cell.get_parameters()}
    if cluster is not None and config.remove_redundancy:
        owners = backend.remove_redundancy(rank, world_size)
        saved = {name for name, owner in owners.items() if owner == rank}
    built = time.perf_counter()

    weights_only = config.resume_training is False
    # Samples per step across the gang: data-parallel ranks share each global batch.
    global_batch = config.runner_config.batch_size * (world_size if cluster is not None else 1)
    progress, resolution = load_start(
        backend,
        config,
        rank=rank,
        world_size=world_size,
        agree=None if cluster is None else cluster.agree,
        barrier=None if cluster is None else cluster.barrier,
        global_batch_size=global_batch,
    )
    if cluster is not None:
        # Only now: a resized gang must not overwrite the strategy of the gang whose step it merges.
        write_strategy(output_dir, rank=rank, world_size=world_size, saved=saved, config=config)
    resumed_from = None
    if not resolution.random_init:
        path = resolution.files[rank] if rank in resolution.files else resolution.files[0]
        resumed_from = {"file": path.name, "step": str(resolution.key), "global_step": progress.global_step}
        if _resizes(resolution, world_size):
            resumed_from["world_size"] = resolution.world_size
    if progress.global_batch_size and progress.global_batch_size != global_batch and not weights_only:
        log.info(
            "the global batch changed from %d to %d: rescaling global step %d",
            progress.global_batch_size,
            global_batch,
            progress.global_step,
        )
        progress = rescale_progress(
            progress, old=progress.global_batch_size, new=global_batch, steps_per_epoch=n
        )
        resumed_from = resumed_from and {**resumed_from, "global_step": progress.global_step}
    progress.global_batch_size = global_batch
    if progress.dataset_fingerprint != stream.fingerprint:
        if progress.global_step:
            log.info("the dataset changed: incremental training from global step %d", progress.global_step)
        progress.epoch_base, progress.data_step = progress.epoch, 0
        progress.dataset_fingerprint = stream.fingerprint
    loaded_at = time.perf_counter()

    monitor = config.checkpoint_monitor
    checkpointer = None
    if monitor is not None:
        checkpointer = Checkpointer(
            backend=backend,
            monitor=monitor,
            output_dir=output_dir,
            rank=rank,
            world_size=world_size,
            resumed_key=None if resolution.random_init or weights_only else resolution.key,
            attempt=attempt,
        )
    steplog = StepLog(step_log_path(output_dir, rank))
    remaining_epochs = epochs - progress.epoch_base
    end = remaining_epochs * n
    log.info(
        "start: global step %d, %d steps to go; import %.2fs, build %.2fs, load %.2fs",
        progress.global_step,
        max(0, end - progress.data_step),
        imported - started,
        built - imported,
        loaded_at - built,
    )
    first = True
    saved_at = progress.global_step
    save_every = monitor.save_checkpoint_steps if monitor is not None else 0
    try:
        for batch in stream.batches(start_step=progress.data_step, epochs=remaining_epochs):
            if not stop.begin_step():
                break
            t0 = time.perf_counter()
            keep = _keep_mask(config, batch.shape[0], progress.global_step, rank, world_size, cluster)
            result = backend.step(batch, keep)
            stop.end_step()
            progress.advance(steps_per_epoch=n)
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
            }
            if first:
                record["resumed_from"] = resumed_from
                record["startup_seconds"] = round(t0 - started, 3)
                first = False
            steplog.write(record)
            last = progress.data_step >= end
            if checkpointer is not None and (
                progress.global_step % save_every == 0 or last or stop.requested
            ):
                checkpointer.save(progress)
                saved_at = progress.global_step
            if stop.requested:
                break
        if checkpointer is not None:
            checkpointer.wait()
    finally:
        steplog.close()
    finished = progress.data_step >= end
    status: Literal["completed", "stopped"] = "completed" if finished else "stopped"
    log.info("%s at global step %d", status, progress.global_step)
    return Outcome(status, progress.global_step, saved_at == progress.global_step, resumed_from)


def load_start(
    backend: Any,
    config: TrainerConfig,
    *,
    rank: int,
    world_size: int,
    agree: Callable[[StepKey | None], tuple[StepKey | None, bool]] | None = None,
    barrier: Callable[[bool], bool] | None = None,
    global_batch_size: int = 0,
) -> tuple[Progress, Resolution]:
    """Load the resolved checkpoint; a file that fails to parse makes the next older step the candidate.

    With `agree` (collectives across the gang), the ranks settle on the oldest of their answers
    before anyone loads, so every rank resumes from the same step. A step written by a gang of
    another size (auto_trans_ckpt) is merged first, by rank 0 while the others wait at `barrier`."""
    from trainer_image.training.backend import CheckpointDamaged

    weights_only = config.resume_training is False
    exclude: set[Path] = set()
    at_most: StepKey | None = None
    while True:
        resolution = resolve_checkpoint(
            config, rank=rank, world_size=world_size, exclude=exclude, at_most=at_most
        )
        if agree is not None and resolution.source != "file":
            # Rounds until unanimous; every rank takes part in every round (it is a collective).
            agreed, unanimous = agree(resolution.key)
            # Every rank sees the same (agreed, unanimous), so all take the same branch.
            if agreed is None:
                if not resolution.random_init:
                    log.info("the gang starts from random init, this rank found step %s", resolution.key)
                return Progress(), Resolution("none")
            if not unanimous:
                log.info(
                    "the gang resumes from step %s at the latest, this rank found %s", agreed, resolution.key
                )
                at_most = agreed
                continue
        if resolution.random_init:
            return Progress(), resolution
        try:
            if _resizes(resolution, world_size):
                path = _unified(backend, config, resolution, rank=rank, barrier=barrier)
                siblings: tuple[Path, ...] = ()
            else:
                path = resolution.files[rank]
                siblings = tuple(p for r, p in sorted(resolution.files.items()) if r != rank and p != path)
            loaded = backend.load(
                path, weights_only=weights_only, siblings=siblings, global_batch_size=global_batch_size
            )
        except CheckpointDamaged as e:
            if agree is not None:  # the other ranks have loaded: fail, the gang restart resolves again
                raise RuntimeError(f"cannot load {e.path} after the gang agreed on it: {e}") from e
            if resolution.source != "directory" or isinstance(config.resume_training, str):
                raise ConfigError(f"cannot load {e.path}: {e}") from e
            log.warning("fell back: %s could not be loaded (%s)", e.path, e)
            exclude.add(e.path)
            continue
        progress = loaded or Progress()
        log.info(
            "resumed from %s (global step %d, weights only: %s)", path, progress.global_step, weights_only
        )
        return progress, resolution


def _resizes(resolution: Resolution, world_size: int) -> bool:
    return resolution.world_size is not None and resolution.world_size != world_size


def _unified(
    backend: Any,
    config: TrainerConfig,
    resolution: Resolution,
    *,
    rank: int,
    barrier: Callable[[bool], bool] | None,
) -> Path:
    """The merged checkpoint of the resolved step (auto_trans_ckpt). Rank 0 merges; with a gang, the
    others wait for it and then take the merge it recorded, or fail with it."""
    from trainer_image.checkpoint.merge import UNIFIED_DIR, MergeError, reusable, unify, write_with_mindspore
    from trainer_image.training.backend import _read

    assert resolution.key is not None
    output_dir = Path(config.output_dir)
    log.info(
        "auto_trans_ckpt: step %s was written by %s ranks; loading it through %s",
        resolution.key,
        resolution.world_size,
        output_dir / UNIFIED_DIR,
    )
    strategy_dir = Path(config.src_strategy_path_or_dir) if config.src_strategy_path_or_dir else None
    path = None
    if rank == 0:
        try:
            path = unify(
                output_dir,
                resolution.key,
                resolution.files,
                read=_read,
                write=write_with_mindspore,
                strategy_dir=strategy_dir,
            )
        except BaseException:
            if barrier is not None:
                barrier(False)
            raise
    if barrier is not None and not barrier(True):
        raise RuntimeError("rank 0 could not merge the checkpoint; see its log")
    if path is None:
        path = reusable(output_dir / UNIFIED_DIR, resolution.key, resolution.files)
        if path is None:
            raise MergeError(f"rank 0 reported a merge of step {resolution.key} that is not there")
    return path


def _keep_mask(
    config: TrainerConfig, rows: int, global_step: int, rank: int, world_size: int, cluster: Any
) -> Any:
    """Dropout keep-mask for this rank's rows. Data-parallel ranks cut theirs from the mask of the
    whole global batch (rank r holds rows r, r + N, ... as the sharded sampler interleaves them), so
    the masks, like the samples, do not depend on how many ranks share a global batch."""
    from trainer_image.training.model import dropout_keep

    if cluster is None:
        return dropout_keep(config.model, rows, config.seed, global_step)
    keep = dropout_keep(config.model, rows * world_size, config.seed, global_step)
    if keep is None:
        return None
    axis = 2 if config.model.type == "llama" else 0  # the batch axis of model.dropout_keep's shapes
    return np.ascontiguousarray(np.take(keep, np.arange(rank, rows * world_size, world_size), axis=axis))


def resolve_checkpoint(
    config: TrainerConfig,
    *,
    rank: int,
    world_size: int,
    exclude: set[Path],
    check: Check = Check.DIGEST,
    quiet: bool = False,
    at_most: StepKey | None = None,
) -> Resolution:
    own = checkpoint_root(Path(config.output_dir))
    target = Path(config.load_checkpoint) if config.load_checkpoint else None
    missing_ok = target is not None and target.resolve() == own.resolve()
    try:
        res = resolve(
            config.load_checkpoint,
            config.resume_training,
            world_size=world_size,
            formats=(config.load_ckpt_format,),
            check=check,
            missing_ok=missing_ok,
            exclude=exclude,
            at_most=at_most,
            resize=config.auto_trans_ckpt,
        )
    except ResolveError as e:
        raise ConfigError(str(e)) from e
    for warning in () if quiet else res.warnings:
        log.warning("fell back: %s" if "falling back" in warning else "%s", warning)
    return res


def write_strategy(
    output_dir: Path, *, rank: int, world_size: int, saved: set[str], config: TrainerConfig
) -> None:
    """`output_dir/strategy/ckpt_strategy_rank_N.json`: what this rank's checkpoints hold."""
    from trainer_image.checkpoint.commit import atomic_write_bytes
    from trainer_image.checkpoint.merge import STRATEGY_DIR, strategy_body, strategy_path

    directory = output_dir / STRATEGY_DIR
    directory.mkdir(parents=True, exist_ok=True)
    body = strategy_body(
        rank=rank,
        world_size=world_size,
        saved=saved,
        batch_size=config.runner_config.batch_size,
        remove_redundancy=config.remove_redundancy,
    )
    atomic_write_bytes(strategy_path(directory, rank), body)
