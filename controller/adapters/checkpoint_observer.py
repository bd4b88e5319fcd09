"""Checkpoint awareness: what the trainers have committed, seen through a read-only mount of the
shared volume, without polling.

A `watchdog` observer watches the shared root. When something under a tracked job's
`<output>/checkpoint/` changes (the trainer renames meta.json into place last), the last step
complete on every rank is recomputed with the trainer's own resolver in its cheap mode, so the
controller and the trainer can never disagree about what "complete" means. Writes under
`<output>/log/` count as progress (for hang detection) and give the last step seen (for the
steps-lost metric). inotify does not see writes made by other NFS clients; for such volumes set
a polling interval, which switches to watchdog's polling observer.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from controller.api.types import CheckpointRef
from controller.core.timefmt import format_time
from respawn_protocol import contract
from respawn_protocol.resolve import ResolveError, last_complete

log = logging.getLogger(__name__)
_TAIL_BYTES = 8192
_WRITE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})


@dataclass(frozen=True)
class Snapshot:
    checkpoint: CheckpointRef | None = None
    checkpoint_time: datetime | None = None
    last_progress: datetime | None = None
    last_step: int | None = None


@dataclass
class _Tracked:
    output: Path
    world_size: int  # ranks: replicas x ranksPerPod
    snapshot: Snapshot


def last_logged_step(log_dir: Path) -> int | None:
    """The highest global_step in the tails of `rank_*/steps.jsonl`; torn last lines are skipped."""
    best: int | None = None
    for steps in log_dir.glob("rank_*/steps.jsonl"):
        try:
            with steps.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            try:
                step = json.loads(line).get("global_step")
            except (ValueError, AttributeError):
                continue
            if isinstance(step, int):
                best = step if best is None else max(best, step)
                break
    return best


def read_checkpoint(checkpoint_dir: Path, world_size: int) -> CheckpointRef | None:
    try:
        found = last_complete(checkpoint_dir)
    except (ResolveError, OSError) as exc:
        log.warning("cannot resolve checkpoints", extra={"path": str(checkpoint_dir), "error": str(exc)})
        return None
    if found.random_init or found.key is None:
        return None
    first = found.files[min(found.files)]
    step = found.global_step if found.global_step is not None else found.key.step
    return CheckpointRef(
        step=step,
        epoch=found.key.epoch,
        file=first.name,
        time=format_time(datetime.now(UTC)),
        attempt=found.attempt,
    )


class CheckpointObserver(FileSystemEventHandler):
    def __init__(
        self, root: Path, *, on_change: Callable[[str], None], polling_interval: float | None = None
    ) -> None:
        self.root = root
        self._on_change = on_change
        self._observer = PollingObserver(timeout=polling_interval) if polling_interval else Observer()
        self._lock = threading.Lock()
        self._jobs: dict[str, _Tracked] = {}

    def start(self) -> None:
        self._observer.schedule(
            self,
            str(self.root),
            recursive=True,
            event_filter=[
                FileCreatedEvent,
                FileModifiedEvent,
                FileMovedEvent,
                FileDeletedEvent,
                FileClosedEvent,
            ],
        )
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=10)

    def track(self, key: str, output_dir: str, world_size: int) -> None:
        """Follow a job's output directory (relative to the root); a no-op if already followed."""
        output = (self.root / output_dir).resolve()
        if not output.is_relative_to(self.root.resolve()):
            return
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and current.output == output and current.world_size == world_size:
                return
            self._jobs[key] = _Tracked(output, world_size, Snapshot())
        self._refresh(key, checkpoint=True, logs=True, notify=False)

    def refresh(self, key: str) -> None:
        """Re-read a tracked job's checkpoints and logs now, without waiting for the events."""
        self._refresh(key, checkpoint=True, logs=True, notify=False)

    def untrack(self, key: str) -> None:
        with self._lock:
            self._jobs.pop(key, None)

    def snapshot(self, key: str) -> Snapshot:
        with self._lock:
            tracked = self._jobs.get(key)
            return tracked.snapshot if tracked else Snapshot()

    def snapshots(self) -> dict[str, Snapshot]:
        with self._lock:
            return {key: t.snapshot for key, t in self._jobs.items()}

    # watchdog calls this on its own thread for every event under the root.
    def on_any_event(self, event: FileSystemEvent) -> None:
        # Reads (ours included: resolving opens files) must not trigger more reads.
        if event.event_type not in _WRITE_EVENTS or event.is_directory:
            return
        paths = [Path(os.fsdecode(p)) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
        # The trainer commits a step by renaming meta.json into place; a deletion may remove a
        # file the current answer relies on. Everything else under checkpoint/ is in flight.
        committed = event.event_type == "deleted" or any(p.name == contract.META_FILE for p in paths)
        stepped = any(p.name == "steps.jsonl" for p in paths)
        if not (committed or stepped):
            return
        with self._lock:
            tracked = list(self._jobs.items())
        for key, job in tracked:
            checkpoint = committed and any(
                p.is_relative_to(job.output / contract.CHECKPOINT_DIR) for p in paths
            )
            logs = stepped and any(p.is_relative_to(job.output / "log") for p in paths)
            if checkpoint or logs:
                self._refresh(key, checkpoint=checkpoint, logs=logs, notify=True)

    def _refresh(self, key: str, *, checkpoint: bool, logs: bool, notify: bool) -> None:
        with self._lock:
            job = self._jobs.get(key)
        if job is None:
            return
        now = datetime.now(UTC)
        snap = job.snapshot
        ref, ref_time = snap.checkpoint, snap.checkpoint_time
        if checkpoint:
            found = read_checkpoint(job.output / contract.CHECKPOINT_DIR, job.world_size)
            if found is not None and (ref is None or found.step != ref.step or found.file != ref.file):
                ref, ref_time = found, now
        step = last_logged_step(job.output / "log") if logs else snap.last_step
        progressed = notify or ref is not None or step is not None
        new = Snapshot(ref, ref_time, now if progressed else snap.last_progress, step)
        with self._lock:
            if key in self._jobs:
                self._jobs[key].snapshot = new
        if notify and new.checkpoint != snap.checkpoint:
            self._on_change(key)
