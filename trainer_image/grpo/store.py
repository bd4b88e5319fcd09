"""GRPO's checkpoints in the checkpoint store (training/storesync.py does the same for pretraining).

A GRPO step is a policy file, which meta.json records, and its optimizer file, a companion
(store/companions.py): uploaded before the policy file, downloaded before it, pruned with it. The
frozen reference (reference.py, written once by the job's first start) is mirrored under
`PREFIX/ref/` as `ref/` is laid out under the save directory, by an uploader of its own; a start on
an empty disk brings it back before it loads, since a resumed start needs the initial policy the job
began from. The reference's uploads are not in the rank's upload report (that is the steps'); a
failure is logged.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from respawn_protocol.layout import rank_prefix
from respawn_protocol.meta import MetaError, read_meta
from trainer_image.checkpoint.store.client import Settings, StoreError
from trainer_image.checkpoint.store.companions import Companions
from trainer_image.checkpoint.store.download import predownload
from trainer_image.checkpoint.store.upload import Uploader
from trainer_image.grpo.config import GrpoConfig
from trainer_image.grpo.reference import REF_DIR, reference_dir
from trainer_image.grpo.saving import OPTIMIZER_TAG
from trainer_image.training import storesync
from trainer_image.training.gang import Gang
from trainer_image.training.report import Reporter

log = logging.getLogger("trainer_image.store")

COMPANIONS = Companions((OPTIMIZER_TAG,))


def reference_settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, prefix=f"{settings.prefix}/{REF_DIR}" if settings.prefix else REF_DIR
    )


def before_start(environ: Mapping[str, str], config: GrpoConfig, gang: Gang, reporter: Reporter) -> None:
    """Predownload the newest step complete in the store with its optimizer files, then this rank's
    reference if the disk has none (a failure is logged: the start goes on as it would have)."""
    view = config.trainer_view()
    storesync.before_resume(environ, view, gang, reporter, companions=COMPANIONS)
    settings = Settings.from_env(environ)
    if settings is None or not storesync.resumes_own(view, gang) or config.ref_checkpoint_path:
        return
    try:
        predownload(
            reference_settings(settings),
            output_dir=config.save_dir,
            rank=gang.rank,
            world_size=gang.world_size,
            root=config.save_dir / REF_DIR,
        )
    except StoreError as e:
        log.error("store: no reference downloaded: %s", e)


@dataclasses.dataclass
class Uploaders:
    steps: Uploader
    reference: Uploader

    def announce_reference(self, config: GrpoConfig, rank: int) -> None:
        """The saved reference to the store (sent once: one already there is not sent again)."""
        directory = reference_dir(config.save_dir, rank)
        try:
            meta = read_meta(directory)
        except MetaError:
            return  # prepare_reference has refused it already
        if meta is not None and meta.checkpoints:
            record = meta.checkpoints[-1]
            self.reference.committed(record, directory / record.file)

    def close(self, environ: Mapping[str, str]) -> None:
        for up in (self.steps, self.reference):
            storesync.close(up, environ)


def uploaders(
    environ: Mapping[str, str], config: GrpoConfig, gang: Gang, reporter: Reporter
) -> Uploaders | None:
    """The steps' and the reference's uploaders, the saved reference announced (it is written before
    any step); None without a store or a CheckpointMonitor."""
    steps = storesync.uploader(environ, config.trainer_view(), gang, reporter, companions=COMPANIONS)
    settings = Settings.from_env(environ)
    if steps is None or settings is None:
        return None
    reference = Uploader(
        reference_settings(settings),
        rank=gang.rank,
        world_size=gang.world_size,
        base=rank_prefix(REF_DIR, gang.rank),
        keep_max=1,
        on_change=lambda upload: None,
    )
    made = Uploaders(steps, reference)
    made.announce_reference(config, gang.rank)
    return made
