"""Where a start of one rank begins: resolve the checkpoint, agree on it with the gang, load it.

- `start_sources`, `resolve_start`, `load_first`: under the controller (the job's checkpoint
  directory, `RESPAWN_JOB_CHECKPOINT_DIR`), auto-resume from that directory once it holds a step
  complete on every rank; until then the user's `load_checkpoint` / `resume_training` (pretrained
  weights), or random init. Without it, the user's settings alone.
- `resolve_checkpoint`: the configured `load_checkpoint` + `resume_training` through
  `respawn_protocol.resolve` (config errors for what cannot be satisfied).
- `load_start`: resolve, agree with the gang (data parallel), load; a file that fails to parse makes
  the next older step the candidate. A step written by a gang of another size (auto_trans_ckpt) is
  loaded through a merged checkpoint (`merged_checkpoint`).
- `continue_progress`: the loaded position restated for this start (a changed global batch, a
  changed dataset); `resumed_from`: what the first step-log line says about it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from respawn_protocol.layout import StepKey, checkpoint_root, substitute_rank
from respawn_protocol.lineage import resumed_parent
from respawn_protocol.resolve import Check, Resolution, ResolveError, resolve
from trainer_image.checkpoint.progress import Progress
from trainer_image.checkpoint.rescale import rescale_progress
from trainer_image.config import ConfigError, TrainerConfig

if TYPE_CHECKING:
    from trainer_image.training.backend import CheckpointDamaged

log = logging.getLogger("trainer_image")

Agree = Callable[[StepKey | None], tuple[StepKey | None, bool]]  # parallel.Cluster.agree
Barrier = Callable[[bool], bool]  # parallel.Cluster.barrier
# The job's own directory resolved elsewhere than on local disk (store/resolver.py): (files that
# failed to load, the gang's bound) -> this rank's resolution.
Resolver = Callable[[set[Path], StepKey | None], Resolution]


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


def start_sources(config: TrainerConfig, job_checkpoint_dir: Path | None) -> list[TrainerConfig]:
    """What a start may load, in order of preference: the job's own checkpoint directory, resumed in
    full (auto-resume), then the user's `load_checkpoint` / `resume_training`. The first that holds
    a checkpoint wins; the last one is taken even if it holds none (random init)."""
    if job_checkpoint_dir is None:
        return [config]
    own = dataclasses.replace(config, load_checkpoint=str(job_checkpoint_dir), resume_training=True)
    if config.resume_training is True and _same_path(config.load_checkpoint, job_checkpoint_dir):
        return [own]  # the user asked for auto-resume themselves
    return [own, config]


def _same_path(path: str, other: Path) -> bool:
    return bool(path) and Path(path).resolve() == other.resolve()


def resolve_start(
    config: TrainerConfig,
    job_checkpoint_dir: Path | None,
    *,
    rank: int,
    world_size: int,
    check: Check = Check.DIGEST,
    quiet: bool = False,
) -> tuple[TrainerConfig, Resolution]:
    """This rank's view of the start, neither agreed with the gang nor loaded: the first of
    `start_sources` that holds a checkpoint (else the last), and its resolution."""
    *preferred, last = start_sources(config, job_checkpoint_dir)
    resolve_one = functools.partial(
        resolve_checkpoint, rank=rank, world_size=world_size, exclude=set(), check=check, quiet=quiet
    )
    for source in preferred:
        res = resolve_one(source)
        if not res.random_init:
            return source, res
    return last, resolve_one(last)


def load_first(
    backend: Any,
    config: TrainerConfig,
    *,
    job_checkpoint_dir: Path | None,
    rank: int,
    world_size: int,
    agree: Agree | None = None,
    barrier: Barrier | None = None,
    global_batch_size: int = 0,
    own: Resolver | None = None,
) -> tuple[TrainerConfig, Progress, Resolution]:
    """`load_start` from the first of `start_sources` that holds a checkpoint (else the last): the
    source taken (its `resume_training` says whether the load was weights only), the progress and
    the resolution.

    With a gang, each source is agreed as `load_start` agrees: if any rank finds no step of the job's
    directory complete on every rank, the gang agrees on none and every rank moves on to the user's
    source together, so a pretrained start never mixes with a job checkpoint. `own` resolves the
    job's own directory (output_dir/checkpoint) where this rank's disk does not show it whole."""
    *preferred, last = start_sources(config, job_checkpoint_dir)
    load = functools.partial(
        load_start,
        backend,
        rank=rank,
        world_size=world_size,
        agree=agree,
        barrier=barrier,
        global_batch_size=global_batch_size,
    )
    for source in preferred:
        progress, resolution = load(source, resolver=own if _is_own(source) else None)
        if not resolution.random_init:
            return source, progress, resolution
        log.info(
            "the job's checkpoint directory %s holds no step complete on every rank: starting from %s",
            source.load_checkpoint,
            f"load_checkpoint {last.load_checkpoint}" if last.load_checkpoint else "random init",
        )
    return last, *load(last, resolver=own if _is_own(last) else None)


def _is_own(config: TrainerConfig) -> bool:
    return _same_path(config.load_checkpoint, checkpoint_root(Path(config.output_dir))) and (
        config.resume_training is True
    )


def resizes(resolution: Resolution, world_size: int) -> bool:
    """Whether the resolved step was written by a gang of another size."""
    return resolution.world_size is not None and resolution.world_size != world_size


def load_start(
    backend: Any,
    config: TrainerConfig,
    *,
    rank: int,
    world_size: int,
    agree: Agree | None = None,
    barrier: Barrier | None = None,
    global_batch_size: int = 0,
    resolver: Resolver | None = None,
) -> tuple[Progress, Resolution]:
    """Load the resolved checkpoint; a file that fails to parse makes the next older step the candidate.

    With `agree` (collectives across the gang), the ranks settle on the oldest of their answers
    before anyone loads, so every rank resumes from the same step. A step written by a gang of
    another size (auto_trans_ckpt) is merged first, by rank 0 while the others wait at `barrier`."""
    from trainer_image.training.backend import CheckpointDamaged

    exclude: set[Path] = set()
    at_most: StepKey | None = None
    while True:
        if resolver is not None:
            resolution = resolver(exclude, at_most)
        else:
            resolution = resolve_checkpoint(
                config, rank=rank, world_size=world_size, exclude=exclude, at_most=at_most
            )
        if agree is not None and resolution.source != "file":
            answer = _agreed(agree, resolution)
            if isinstance(answer, StepKey):
                at_most = answer
                continue
            resolution = answer
        if resolution.random_init:
            return Progress(), resolution
        try:
            progress = _load(
                backend,
                config,
                resolution,
                rank=rank,
                world_size=world_size,
                barrier=barrier,
                global_batch_size=global_batch_size,
            )
        except CheckpointDamaged as e:
            _may_fall_back(e, resolution, config, agreed=agree is not None)
            exclude.add(e.path)
            continue
        return progress, resolution


def _may_fall_back(
    e: CheckpointDamaged, resolution: Resolution, config: TrainerConfig, *, agreed: bool
) -> None:
    """Raise unless a step that failed to load may be replaced by the next older one: not after the
    gang agreed on it (the other ranks have loaded: fail, the gang restart resolves again), and not
    when the user named the file or the step."""
    if agreed:
        raise RuntimeError(f"cannot load {e.path} after the gang agreed on it: {e}") from e
    if resolution.source != "directory" or isinstance(config.resume_training, str):
        raise ConfigError(f"cannot load {e.path}: {e}") from e
    log.warning("fell back: %s could not be loaded (%s)", e.path, e)


def _agreed(agree: Agree, resolution: Resolution) -> Resolution | StepKey:
    """One round of the gang's agreement on this rank's `resolution`: the resolution to load (random
    init if the gang starts fresh), or the step to resolve again at the latest.

    Rounds go on until unanimous; every rank takes part in every round (it is a collective), and
    every rank sees the same (agreed, unanimous), so all take the same branch."""
    agreed, unanimous = agree(resolution.key)
    if agreed is None:
        if not resolution.random_init:
            log.info("another rank found no complete step; this rank found step %s", resolution.key)
        return Resolution("none")
    if not unanimous:
        log.info("the gang resumes from step %s at the latest, this rank found %s", agreed, resolution.key)
        return agreed
    return resolution


def _load(
    backend: Any,
    config: TrainerConfig,
    resolution: Resolution,
    *,
    rank: int,
    world_size: int,
    barrier: Barrier | None,
    global_batch_size: int,
) -> Progress:
    """Load this rank's file of the resolved step (the merge of it, after a resize); with
    remove_redundancy, what the file lacks comes from the other ranks' files of the step."""
    weights_only = config.resume_training is False
    if resizes(resolution, world_size):
        path = merged_checkpoint(config, resolution, rank=rank, barrier=barrier)
        siblings: tuple[Path, ...] = ()
    else:
        path = resolution.files[rank]
        siblings = tuple(p for r, p in sorted(resolution.files.items()) if r != rank and p != path)
    loaded = backend.load(
        path, weights_only=weights_only, siblings=siblings, global_batch_size=global_batch_size
    )
    progress = loaded or Progress()
    log.info("resumed from %s (global step %d, weights only: %s)", path, progress.global_step, weights_only)
    return progress


def merged_checkpoint(
    config: TrainerConfig, resolution: Resolution, *, rank: int, barrier: Barrier | None
) -> Path:
    """The merged checkpoint of the resolved step (auto_trans_ckpt). Rank 0 merges; with a gang, the
    others wait for it and then take the merge it recorded, or fail with it."""
    from trainer_image.checkpoint.merge import UNIFIED_DIR, MergeError, reusable, unify, write_with_mindspore
    from trainer_image.training.backend import read_checkpoint

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
                read=read_checkpoint,
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


def continue_progress(
    progress: Progress, *, global_batch: int, fingerprint: int, steps_per_epoch: int, weights_only: bool
) -> Progress:
    """The loaded position restated for this start. A changed global batch is rescaled (the position
    is kept in samples); a changed dataset (fingerprint) starts from its beginning in the next epoch
    number, continuing the global step (incremental training)."""
    if progress.global_batch_size and progress.global_batch_size != global_batch and not weights_only:
        log.info(
            "the global batch changed from %d to %d: rescaling global step %d",
            progress.global_batch_size,
            global_batch,
            progress.global_step,
        )
        progress = rescale_progress(
            progress, old=progress.global_batch_size, new=global_batch, steps_per_epoch=steps_per_epoch
        )
    progress.global_batch_size = global_batch
    if progress.dataset_fingerprint != fingerprint:
        if progress.global_step:
            log.info("the dataset changed: incremental training from global step %d", progress.global_step)
        progress.epoch_base, progress.data_step = progress.epoch, 0
        progress.dataset_fingerprint = fingerprint
    return progress


def resumed_from(
    resolution: Resolution, progress: Progress, *, rank: int, world_size: int
) -> dict[str, Any] | None:
    """The first step-log line's `resumed_from`: the file, its step and the global step this start
    continues from (after any rescale), and the old gang's size after a resize; None: random init."""
    if resolution.random_init:
        return None
    path = resolution.files[rank] if rank in resolution.files else resolution.files[0]
    out: dict[str, Any] = {
        "file": path.name,
        "step": str(resolution.key),
        "global_step": progress.global_step,
    }
    if resizes(resolution, world_size):
        out["world_size"] = resolution.world_size
    return out


def lineage_parent(resolution: Resolution) -> str | None:
    """What the lineage of a start that resumes `resolution` in full derives from (lineage.py): the
    same on every rank, which all resume the same step. None: nothing resumed."""
    if resolution.random_init:
        return None
    rank0 = substitute_rank(resolution.files[min(resolution.files)].name, 0)
    return resumed_parent(resolution.lineage, rank0, resolution.key or StepKey(0, 0))
