"""Where a rank resumes when its output directory is its own disk, not shared with the gang: the
store is then the only place that shows the other ranks' steps.

The step is the newest complete on every rank in the store (view.py, the same `resolve` as for a
shared directory, over the store's listing); this rank's file of it is brought to local disk as a
predownload brings one (download.py: streamed, size and sha256 checked, renamed, meta.json last),
or taken as it is when the local copy has the recorded digest. An object that does not match is
never loaded: the next older step is tried. The resolution names only this rank's file, so nothing
reads another rank's file (remove_redundancy and a changed world size need a shared directory).

Steps committed locally but not yet uploaded are not resumed from: no other rank can see them.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path

from respawn_protocol.layout import StepKey, checkpoint_root, rank_dir
from respawn_protocol.resolution import Resolution
from respawn_protocol.resolve import ResolveError
from trainer_image.checkpoint.store import view
from trainer_image.checkpoint.store.client import Settings, StoreError, connect, describe
from trainer_image.checkpoint.store.download import Mismatch, fetch, record_of
from trainer_image.config import ConfigError

log = logging.getLogger("trainer_image.store")


class StoreResolver:
    """`load_start`'s resolver for the job's own directory: (files that failed to load, the gang's
    bound) -> this rank's resolution. The store's listing is read once: at a start no rank uploads
    (two attempts never overlap), so every rank reads the same listing."""

    def __init__(self, settings: Settings, *, output_dir: Path, rank: int, world_size: int) -> None:
        self.settings, self.output_dir, self.rank, self.world_size = settings, output_dir, rank, world_size
        self._scratch = tempfile.TemporaryDirectory(prefix="respawn-store-")
        self._view = Path(self._scratch.name)
        self._mismatched: set[Path] = set()
        try:
            self._client = connect(settings)
            view.lay_out(self._client, settings, self._view)
        except StoreError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise StoreError(describe(e, settings)) from e

    def __call__(self, failed: set[Path], at_most: StepKey | None) -> Resolution:
        own = self._view / f"rank_{self.rank}"
        while True:
            exclude = self._mismatched | {own / p.name for p in failed}
            try:
                res = view.newest_complete(self._view, self.world_size, exclude=exclude, at_most=at_most)
            except ResolveError as e:  # a step of another gang size: merging needs every rank's files
                raise ConfigError(
                    f"{self.settings.where()}: {e} (with an output directory the ranks do not share, "
                    "only a step of this gang's size can be resumed)"
                ) from e
            if res.random_init:
                log.info("store: %s holds no step complete on every rank", self.settings.where())
                return res
            record = record_of(self._view, self.rank, res.files[self.rank].name)
            try:
                fetch(self._client, self.settings, record, rank=self.rank, output_dir=self.output_dir)
            except Mismatch as e:
                log.warning("store: fell back: %s (not loaded; trying the next older step)", e)
                self._mismatched.add(res.files[self.rank])
                continue
            local = rank_dir(checkpoint_root(self.output_dir), self.rank) / record.file
            log.info("store: step %s, this rank's file %s", res.key, local)
            return dataclasses.replace(res, files={self.rank: local})

    def close(self) -> None:
        self._scratch.cleanup()
