"""Checkpoint awareness: what the trainers have committed, seen through a read-only mount of the
shared volume, without polling.

A `watchdog` observer watches the shared root. When something under a tracked job's
`<output>/checkpoint/` changes (the trainer renames meta.json into place last), the last step
complete on every rank is recomputed with the trainer's own resolver in its cheap mode, so the
controller and the trainer can never disagree about what "complete" means. Writes under
`<output>/log/` count as progress (for hang detection) and give the last step seen (for the
steps-lost metric). inotify does not see writes made by other NFS clients; for such volumes set
a polling interval, which switches to watchdog's polling observer.

The observer reads the disk only on its own reader thread: the reconcile workers and watchdog's
thread queue a read (`track`, `refresh`, events) and reconciles use the last snapshot, so a slow
or hung filesystem never stalls a reconcile (`refresh` waits for the read a bounded time, and not
at all while the reader is stuck). Reads go through `respawn_protocol.safefs`: no symlink below the
shared root is followed, files are opened without blocking, ranks are looked up by name.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
from respawn_protocol import contract, safefs
from respawn_protocol.layout import step_log_path
from respawn_protocol.resolve import ResolveError, last_complete

log = logging.getLogger(__name__)
_TAIL_BYTES = 8192
_WRITE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})
REFRESH_WAIT = 1.0  # seconds a reconcile waits for a refresh it asked for


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


@dataclass
class _Read:
    """A queued read of one job: what to read, and who waits for it."""

    checkpoint: bool = False
    logs: bool = False
    notify: bool = False  # an event: counts as progress
    done: list[threading.Event] = field(default_factory=list)


def last_logged_step(root: Path, output: Path, world_size: int) -> int | None:
    """The highest global_step in the tails of ranks `0..world_size-1`'s steps.jsonl (looked up by
    name, opened through safefs); torn last lines and unreadable logs are skipped."""
    best: int | None = None
    for rank in range(world_size):
        step = _tail_step(root, step_log_path(output, rank))
        if step is not None:
            best = step if best is None else max(best, step)
    return best


def _tail_step(root: Path, path: Path) -> int | None:
    try:
        with safefs.open_regular(path, root=root) as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            lines = f.read(_TAIL_BYTES).splitlines()
    except (OSError, safefs.UnsafeFile):
        return None
    for line in reversed(lines):
        try:
            step = json.loads(line).get("global_step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int):
            return step
    return None


def read_checkpoint(root: Path, checkpoint_dir: Path, world_size: int) -> CheckpointRef | None:
    try:
        safefs.ensure_dir(root, checkpoint_dir, create=False)  # no link on the way down
        found = last_complete(checkpoint_dir, world_size=world_size)
    except (ResolveError, OSError, safefs.UnsafeFile) as exc:
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
        self,
        root: Path,
        *,
        on_change: Callable[[str], None],
        polling_interval: float | None = None,
        refresh_wait: float = REFRESH_WAIT,
    ) -> None:
        self.root = root
        self._on_change = on_change
        self._observer = PollingObserver(timeout=polling_interval) if polling_interval else Observer()
        self._lock = threading.Lock()
        self._jobs: dict[str, _Tracked] = {}
        self._refresh_wait = refresh_wait
        self._queue: dict[str, _Read] = {}  # guarded by _wake
        self._wake = threading.Condition(self._lock)
        self._busy_since: float | None = None  # when the reader began its current read
        self._stopping = False
        self._reader = threading.Thread(target=self._read_loop, name="checkpoint-reader", daemon=True)

    def start(self) -> None:
        self._reader.start()
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
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=10)
        if self._reader.is_alive():
            self._reader.join(timeout=10)

    def track(self, key: str, output_dir: str, world_size: int) -> None:
        """Follow a job's output directory (relative to the root, as the CRD allows: no `..`, not
        absolute); a no-op if already followed. The first read is queued, not done here."""
        output = self.root / output_dir
        if ".." in Path(output_dir).parts or not output.is_relative_to(self.root):
            return
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and current.output == output and current.world_size == world_size:
                return
            self._jobs[key] = _Tracked(output, world_size, Snapshot())
        self._queue_read(key, _Read(checkpoint=True, logs=True))

    def refresh(self, key: str) -> bool:
        """Ask for a fresh read of a tracked job's checkpoints and logs, and wait for it at most
        `refresh_wait` seconds (not at all while the reader is stuck on an earlier read). True if
        the snapshot is fresh; otherwise the read lands later and `on_change` says so."""
        done = threading.Event()
        self._queue_read(key, _Read(checkpoint=True, logs=True, done=[done]))
        with self._lock:
            stuck = self._busy_since is not None and time.monotonic() - self._busy_since > self._refresh_wait
        return done.wait(0 if stuck else self._refresh_wait)

    def untrack(self, key: str) -> None:
        with self._lock:
            self._jobs.pop(key, None)
            self._queue.pop(key, None)

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
                self._queue_read(key, _Read(checkpoint=checkpoint, logs=logs, notify=True))

    # ------------------------------------------------------------------------------- the reader

    def _queue_read(self, key: str, read: _Read) -> None:
        with self._wake:
            queued = self._queue.setdefault(key, _Read())
            queued.checkpoint |= read.checkpoint
            queued.logs |= read.logs
            queued.notify |= read.notify
            queued.done.extend(read.done)
            self._wake.notify()

    def _read_loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                key = next(iter(self._queue))
                read = self._queue.pop(key)
                self._busy_since = time.monotonic()
            try:
                self._refresh(key, checkpoint=read.checkpoint, logs=read.logs, notify=read.notify)
            except Exception:  # never lose the reader to one job's directory
                log.exception("reading checkpoints failed", extra={"key": key})
            finally:
                with self._lock:
                    self._busy_since = None
                for done in read.done:
                    done.set()

    def _refresh(self, key: str, *, checkpoint: bool, logs: bool, notify: bool) -> None:
        with self._lock:
            job = self._jobs.get(key)
        if job is None:
            return
        now = datetime.now(UTC)
        snap = job.snapshot
        ref, ref_time = snap.checkpoint, snap.checkpoint_time
        if checkpoint:
            found = read_checkpoint(self.root, job.output / contract.CHECKPOINT_DIR, job.world_size)
            if found is not None and (ref is None or found.step != ref.step or found.file != ref.file):
                ref, ref_time = found, now
        step = last_logged_step(self.root, job.output, job.world_size) if logs else snap.last_step
        progressed = notify or ref is not None or step is not None
        new = Snapshot(ref, ref_time, now if progressed else snap.last_progress, step)
        with self._lock:
            if key in self._jobs:
                self._jobs[key].snapshot = new
        if new.checkpoint != snap.checkpoint:
            self._on_change(key)  # the reconcile that asked, or none, has not seen it yet
