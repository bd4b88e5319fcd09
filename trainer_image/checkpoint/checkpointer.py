"""The commit protocol for one rank, synchronous or in a background thread.

Per checkpoint: write to a temp name -> fsync -> rename -> fsync dir (the weights-only copy the same
way) -> sha256 of the durable file -> meta.json (atomically) -> prune. meta.json is the commit record:
it only ever names files that are already durable, with async save too, because the whole sequence
runs in order in one worker. An async save copies the parameters to host buffers in that worker too,
while the next step computes gradients (see snapshot.py); the loop blocks only if the copy is not done
when that step's optimizer update starts.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from respawn_protocol.layout import (
    CheckpointName,
    StepKey,
    checkpoint_root,
    network_name,
    network_root,
    next_run_number,
    parse_name,
    rank_dir,
    rank_prefix,
    with_run_number,
)
from respawn_protocol.lineage import child_lineage, fresh_parent
from respawn_protocol.meta import Meta, MetaError, Record, meta_path, read_meta
from respawn_protocol.resolve import Check, ResolveError, resolve
from trainer_image.checkpoint.commit import (
    atomic_write_bytes,
    fsync_dir,
    publish,
    publish_and_digest,
    remove_stale_temps,
    temp_path,
)
from trainer_image.checkpoint.confine import make_dir
from trainer_image.checkpoint.faults import FaultPlan
from trainer_image.checkpoint.progress import Progress
from trainer_image.checkpoint.prune import doomed, retained
from trainer_image.checkpoint.snapshot import Snapshot
from trainer_image.config import CheckpointFormat, CheckpointMonitor

log = logging.getLogger("trainer_image.checkpoint")

Writer = Callable[[Path, bool], None]  # (temp path, full training state?) -> None


class SaveBackend(Protocol):
    """What the protocol needs from the framework (backend.Backend; a fake in tests)."""

    def save(
        self, path: Path, fmt: CheckpointFormat, progress: Progress, *, network_only: bool = False
    ) -> None: ...
    def snapshot(self) -> Snapshot: ...
    def write_snapshot(
        self, snap: Snapshot, path: Path, fmt: CheckpointFormat, progress: Progress | None
    ) -> None: ...


class Checkpointer:
    def __init__(
        self,
        *,
        backend: SaveBackend,
        monitor: CheckpointMonitor,
        output_dir: Path,
        rank: int,
        world_size: int,
        resumed_key: StepKey | None,
        attempt: int | None = None,
        parent: str | None = None,
        on_commit: Callable[[Record], None] | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.backend = backend
        self.monitor = monitor
        self.rank = rank
        self.world_size = world_size
        self.attempt = attempt
        self._on_commit = on_commit  # told of each commit after its meta.json is in place
        self.root = checkpoint_root(output_dir)
        self.dir = rank_dir(self.root, rank)
        self.network_dir = rank_dir(network_root(output_dir), rank)
        self.faults = faults or FaultPlan()
        for d in (self.dir, self.network_dir):
            make_dir(output_dir, d)  # ConfigError for a symlinked folder, before anything is touched
        for d in (self.dir, self.network_dir):
            for stale in remove_stale_temps(d):
                log.info("removed stale temp file %s", stale)
        self.base = rank_prefix(monitor.prefix, rank)
        # MindSpore's rule over every rank's folder, so that the ranks of one start share `K` (the
        # first save is after the first step, which a data-parallel gang runs together).
        run = next_run_number(
            [(self.dir, self.base), (self.network_dir, self.base)]
            + [(rank_dir(self.root, r), rank_prefix(monitor.prefix, r)) for r in range(world_size)]
        )
        self.prefix = with_run_number(self.base, run)
        # `parent`: the resumed step (lineage.resumed_parent); None for a start without one. Under
        # the controller the attempt tells fresh starts apart: `K` would differ between ranks that
        # start further apart than a first step takes, and their steps would then never pair.
        fresh = fresh_parent(run if attempt is None else None)
        self.lineage = child_lineage(parent or fresh, attempt)
        self.history = self._initial_history(resumed_key)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _initial_history(self, resumed_key: StepKey | None) -> list[Record]:
        try:
            meta = read_meta(self.dir)
        except MetaError as e:
            log.warning("starting a fresh checkpoint history: %s", e)
            return []
        if meta is None:
            return []
        # Entries after the resumed step belong to a history this run abandons.
        return [
            r
            for r in meta.checkpoints
            if (self.dir / r.file).is_file() and (resumed_key is None or r.key <= resumed_key)
        ]

    # ------------------------------------------------------------------------------------------ public

    def save(self, progress: Progress) -> None:
        progress = dataclasses.replace(progress)
        fmt = self.monitor.checkpoint_format
        if not self.monitor.async_save:
            self._commit(
                progress, lambda tmp, full: self.backend.save(tmp, fmt, progress, network_only=not full)
            )
            return
        self.wait()
        snap = self.backend.snapshot()

        def write(tmp: Path, full: bool) -> None:
            self.backend.write_snapshot(snap, tmp, fmt, progress if full else None)

        self._thread = threading.Thread(
            target=self._run, args=(progress, write, snap), name="checkpoint-writer"
        )
        try:
            self._thread.start()
        except BaseException:
            snap.copy()  # the next step waits for the copy: never leave it pending
            raise

    def wait(self) -> None:
        """Block until the in-flight async save is committed; re-raise its failure."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"asynchronous checkpoint save failed: {error}") from error

    # ----------------------------------------------------------------------------------------- protocol

    def _run(self, progress: Progress, write: Writer, snap: Snapshot) -> None:
        try:
            snap.copy()  # first: the loop's next optimizer update waits for it
            self._commit(progress, write)
        except BaseException as e:  # surfaced by wait()
            self._error = e

    def _commit(self, progress: Progress, write: Writer) -> None:
        fmt = self.monitor.checkpoint_format
        checkpoint = CheckpointName(self.prefix, StepKey(progress.epoch, progress.step), fmt)
        name = checkpoint.name
        final = self.dir / name
        tmp = temp_path(final)
        write(tmp, True)
        self.faults.reach("before_publish")
        sha256 = publish_and_digest(tmp, final)
        network_file = None
        if self.monitor.save_network_params:
            network_file = network_name(checkpoint)
            net_tmp = temp_path(self.network_dir / network_file)
            write(net_tmp, False)
            publish(net_tmp, self.network_dir / network_file)
        log.info("saved %s (global step %d)", final, progress.global_step)
        self.faults.reach("after_publish")

        record = Record(
            file=name,
            epoch=progress.epoch,
            step=progress.step,
            global_step=progress.global_step,
            size=final.stat().st_size,
            sha256=sha256,
            network_file=network_file,
            world_size=self.world_size,
            attempt=self.attempt,
            lineage=self.lineage,
        )
        history = self._carried(record) + [r for r in self.history if r.key < record.key] + [record]
        self._write_meta(history)
        log.info("committed %s (global step %d)", name, progress.global_step)
        if self._on_commit is not None:
            self._on_commit(record)
        self.faults.reach("after_meta")
        self._prune(history, record)
        self.faults.reach("after_prune")

    def _carried(self, record: Record) -> list[Record]:
        """Records at or past `record` that must stay: the step a gang of another size wrote and
        this gang resumed from (step numbers restart lower when the global batch grows) while it is
        still what a crash would resume from. Of this gang's own line, such records are an
        abandoned branch and go."""
        foreign = [r for r in self.history if r.key >= record.key and r.world_size != record.world_size]
        if not foreign:
            return []
        protect = self._newest_complete()
        return [r for r in foreign if r.file in protect]

    def _write_meta(self, history: list[Record]) -> None:
        last = history[-1]
        meta = Meta(last.epoch, last.step, last.file, last.global_step, history)
        atomic_write_bytes(meta_path(self.dir), meta.to_json())
        self.history = history

    def _prune(self, history: list[Record], newest: Record) -> None:
        protect = self._newest_complete()
        kept = retained(history, newest, self.monitor.keep_checkpoint_max, protect)
        if kept != history:
            self._write_meta(kept)
        keep = {r.file for r in kept} | {r.network_file for r in kept if r.network_file} | set(protect)
        keep |= {network_name(parsed) for name in protect if (parsed := parse_name(name)) is not None}
        for directory in (self.dir, self.network_dir):
            victims = doomed(directory, self.base, keep)
            for path in victims:
                path.unlink(missing_ok=True)
                log.info("pruned %s", path)
            if victims:
                fsync_dir(directory)

    def _newest_complete(self) -> set[str]:
        """This rank's file of the newest step complete on every rank: never pruned."""
        if self.world_size == 1:
            return {self.history[-1].file}
        try:
            res = resolve(self.root, True, world_size=self.world_size, check=Check.EXISTS, resize=True)
        except ResolveError as e:
            log.warning("cannot tell the newest complete step, pruning nothing: %s", e)
            return {p.name for p in self.dir.iterdir()}
        path = res.files.get(self.rank)
        return {path.name} if path is not None else set()
