"""The training loop of one rank: resolve, load, step, log, checkpoint, stop on request."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import numpy as np

from trainer_image.config import ConfigError, TrainerConfig
from trainer_image.layout import StepKey, checkpoint_root, step_log_path
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
    # Resolve before the slow imports: a bad name fails in a fraction of a second.
    resolve_checkpoint(config, rank=rank, world_size=world_size, exclude=set(), check=Check.SIZE, quiet=True)

    if config.remove_redundancy and world_size > 1 and not config.use_parallel:
        raise ConfigError(
            "remove_redundancy: needs use_parallel (ranks that train alone hold different weights)"
        )
    cluster = None
    if config.use_parallel and world_size > 1:
        from trainer_image.parallel import Cluster

        cluster = Cluster.join(config, rank=rank, world_size=world_size, environ=os.environ)
    try:
        return _train(config, rank=rank, world_size=world_size, stop=stop, cluster=cluster, started=started)
    finally:
        if cluster is not None:
            cluster.close()


def _train(
    config: TrainerConfig, *, rank: int, world_size: int, stop: StopRequest, cluster: Any, started: float
) -> Outcome:
    from trainer_image.backend import Backend
    from trainer_image.checkpointer import Checkpointer
    from trainer_image.data import build_stream
    from trainer_image.model import dropout_keep

    output_dir = Path(config.output_dir)
    imported = time.perf_counter()
    stream = build_stream(config, rank=rank, world_size=world_size)
    n = stream.steps_per_epoch
    epochs = config.runner_config.epochs
    total_steps = config.lr_schedule.total_steps if config.lr_schedule.total_steps > 0 else epochs * n
    backend = Backend(config, total_steps=total_steps)
    if cluster is not None:
        saved = {p.name for p in backend.cell.get_parameters()}
        if config.remove_redundancy:
            owners = backend.remove_redundancy(rank, world_size)
            saved = {name for name, owner in owners.items() if owner == rank}
        write_strategy(output_dir, rank=rank, world_size=world_size, saved=saved, config=config)
    built = time.perf_counter()

    weights_only = config.resume_training is False
    progress, resolution = load_start(
        backend, config, rank=rank, world_size=world_size, agree=None if cluster is None else cluster.agree
    )
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
    backend: Any,
    config: TrainerConfig,
    *,
    rank: int,
    world_size: int,
    agree: Callable[[StepKey | None], tuple[StepKey | None, bool]] | None = None,
) -> tuple[Progress, Resolution]:
    """Load the resolved checkpoint; a file that fails to parse makes the next older step the candidate.

    With `agree` (collectives across the gang), the ranks settle on the oldest of their answers
    before anyone loads, so every rank resumes from the same step."""
    from trainer_image.backend import CheckpointDamaged

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
        path = resolution.files[rank]
        try:
            siblings = tuple(p for r, p in sorted(resolution.files.items()) if r != rank and p != path)
            loaded = backend.load(path, weights_only=weights_only, siblings=siblings)
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
    import json

    from trainer_image.commit import atomic_write_bytes

    directory = output_dir / "strategy"
    directory.mkdir(parents=True, exist_ok=True)
    body = {
        "rank": rank,
        "world_size": world_size,
        "parallel_mode": "data_parallel",
        "remove_redundancy": config.remove_redundancy,
        "batch_size": config.runner_config.batch_size,
        "saved_parameters": sorted(saved),
    }
    atomic_write_bytes(
        directory / f"ckpt_strategy_rank_{rank}.json", (json.dumps(body, indent=1) + "\n").encode()
    )
