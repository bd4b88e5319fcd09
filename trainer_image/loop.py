"""The training loop of one rank: resolve, load, step, log, checkpoint, stop on request."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np

from trainer_image.config import ConfigError, TrainerConfig
from trainer_image.layout import checkpoint_root, step_log_path
from trainer_image.progress import Progress
from trainer_image.resolve import Check, Resolution, ResolveError, resolve
from trainer_image.steplog import StepLog

log = logging.getLogger("trainer_image")


class StopRequest:
    """Set by SIGTERM; the loop finishes the current step, commits a checkpoint and stops."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested:
            log.info("received signal %d: stopping after the current step", signum)
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self)


@dataclass(frozen=True)
class Outcome:
    status: Literal["completed", "stopped"]
    global_step: int
    checkpointed: bool  # the state at `global_step` is committed (or nothing ran since the load)
    resumed_from: dict[str, Any] | None


def run(config: TrainerConfig, *, rank: int, world_size: int, stop: StopRequest) -> Outcome:
    started = time.perf_counter()
    output_dir = Path(config.output_dir)
    # Resolve before the slow imports: a bad name fails in a fraction of a second.
    resolve_checkpoint(config, rank=rank, world_size=world_size, exclude=set(), check=Check.SIZE, quiet=True)

    from trainer_image.backend import Backend
    from trainer_image.checkpointer import Checkpointer
    from trainer_image.data import build_stream
    from trainer_image.model import dropout_keep

    imported = time.perf_counter()
    stream = build_stream(config, rank=rank, world_size=world_size)
    n = stream.steps_per_epoch
    epochs = config.runner_config.epochs
    total_steps = config.lr_schedule.total_steps if config.lr_schedule.total_steps > 0 else epochs * n
    backend = Backend(config, total_steps=total_steps)
    built = time.perf_counter()

    weights_only = config.resume_training is False
    progress, resolution = load_start(backend, config, rank=rank, world_size=world_size)
    resumed_from = None
    if not resolution.random_init:
        path = resolution.files[rank]
        resumed_from = {"file": path.name, "step": str(resolution.key), "global_step": progress.global_step}
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
            if stop.requested:
                break
            t0 = time.perf_counter()
            keep = dropout_keep(config.model, batch.shape[0], config.seed, progress.global_step)
            result = backend.step(batch, keep)
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
    backend: Any, config: TrainerConfig, *, rank: int, world_size: int
) -> tuple[Progress, Resolution]:
    """Load the resolved checkpoint; a file that fails to parse makes the next older step the candidate."""
    from trainer_image.backend import CheckpointDamaged

    weights_only = config.resume_training is False
    exclude: set[Path] = set()
    while True:
        resolution = resolve_checkpoint(config, rank=rank, world_size=world_size, exclude=exclude)
        if resolution.random_init:
            return Progress(), resolution
        path = resolution.files[rank]
        try:
            loaded = backend.load(path, weights_only=weights_only)
        except CheckpointDamaged as e:
            if resolution.source != "directory" or isinstance(config.resume_training, str):
                raise ConfigError(f"cannot load {path}: {e}") from e
            log.warning("fell back: %s could not be loaded (%s)", path, e)
            exclude.add(path)
            continue
        progress = loaded or Progress()
        log.info(
            "resumed from %s (global step %d, weights only: %s)", path, progress.global_step, weights_only
        )
        return progress, resolution


def resolve_checkpoint(
    config: TrainerConfig,
    *,
    rank: int,
    world_size: int,
    exclude: set[Path],
    check: Check = Check.DIGEST,
    quiet: bool = False,
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
        )
    except ResolveError as e:
        raise ConfigError(str(e)) from e
    for warning in () if quiet else res.warnings:
        log.warning("fell back: %s" if "falling back" in warning else "%s", warning)
    return res
