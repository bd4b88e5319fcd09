"""The GRPO run's checkpointer: the pretraining `Checkpointer` (commit protocol, meta.json, pruning),
whose writer is `GrpoBackend.save` (optimizer file first, then the policy file it records), and the
removal of optimizer files left without their policy file."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from respawn_protocol.layout import CheckpointName, StepKey
from respawn_protocol.resolve import Resolution
from trainer_image.checkpoint.checkpointer import Checkpointer
from trainer_image.checkpoint.commit import fsync_dir
from trainer_image.checkpoint.progress import Progress
from trainer_image.grpo.config import GrpoConfig
from trainer_image.training.gang import Gang
from trainer_image.training.report import Reporter
from trainer_image.training.resume import lineage_parent
from trainer_image.training.storesync import announce, resend_newest

if TYPE_CHECKING:
    from trainer_image.checkpoint.store.upload import Uploader
    from trainer_image.grpo.backend import GrpoBackend

log = logging.getLogger("trainer_image.grpo")

OPTIMIZER_TAG = ".optimizer"  # policy `P-1_5.ckpt` -> optimizer `P-1_5.optimizer.ckpt`, same folder


def optimizer_path(policy: Path) -> Path:
    """The optimizer file of a policy file. Its name is no checkpoint name to the resolver
    (`layout.parse_name`), so only the policy file is a candidate and the one meta.json records."""
    return policy.with_name(f"{policy.stem}{OPTIMIZER_TAG}{policy.suffix}")


def open_checkpointer(
    config: GrpoConfig,
    backend: GrpoBackend,
    gang: Gang,
    resolution: Resolution,
    *,
    fresh: bool,
    reporter: Reporter,
    uploader: Uploader | None = None,
) -> Checkpointer | None:
    """The checkpointer; each commit reported and uploaded (the newest an earlier start left is
    sent again: the store may lack it)."""
    monitor = config.checkpoint_monitor
    if monitor is None:
        return None
    checkpointer = Checkpointer(
        backend=backend,
        monitor=dataclasses.replace(monitor, save_network_params=False),
        output_dir=config.save_dir,
        rank=gang.rank,
        world_size=gang.world_size,
        resumed_key=None if fresh else resolution.key,
        attempt=gang.attempt,
        parent=None if fresh else lineage_parent(resolution),
        on_commit=announce(reporter, uploader, config.save_dir, gang.rank),
    )
    resend_newest(uploader, checkpointer)
    fmt = monitor.checkpoint_format

    def target(progress: Progress) -> Path:
        name = CheckpointName(checkpointer.prefix, StepKey(progress.epoch, progress.step), fmt).name
        return optimizer_path(checkpointer.dir / name)

    backend.optimizer_target = target
    remove_orphan_optimizer_files(checkpointer.dir)
    return checkpointer


def remove_orphan_optimizer_files(directory: Path) -> list[Path]:
    """Optimizer files whose policy file is gone (pruned) or was never published (a crash in
    between): nothing can load them. Run after each commit's prune, and at start."""
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
