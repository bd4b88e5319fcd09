"""After each local commit, the rank's step goes to the store in a background thread.

Per step: the checkpoint object (the bytes hashed as they are sent and checked against the commit
record, the object's size checked after), then the rank's meta.json naming only objects already in
the store, then the rank's objects that meta.json no longer names are deleted. So a remote
meta.json never names a missing or partial object, and nothing is deleted before a newer meta.json
is in place. Steps go in commit order; when the store is slower than the saves, the steps committed
meanwhile are skipped for the newest (each remote meta.json is complete on its own, so a skipped
step costs nothing but its absence).

The file is opened when its commit is announced, before local pruning can run (the pruner runs
after the commit in the same writer thread): an unlinked file stays readable through the open
descriptor, so pruning never waits for the store and the store never loses a step to pruning.
Training never waits either: `committed` only opens the file; `close` gives what is pending a
bounded time.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from respawn_protocol.contract import META_FILE
from respawn_protocol.layout import StepKey, in_family, parse_name
from respawn_protocol.meta import Meta, Record
from respawn_protocol.report import Upload
from respawn_protocol.resolve import ResolveError
from trainer_image.checkpoint.faults import FaultPlan
from trainer_image.checkpoint.prune import retained
from trainer_image.checkpoint.store import view
from trainer_image.checkpoint.store.client import Settings, StoreError, connect, describe
from trainer_image.checkpoint.store.companions import SHA256_METADATA, Companions

log = logging.getLogger("trainer_image.store")
MAX_BACKOFF = 60.0
CHUNK = 16 << 20  # multipart part size; at most CONCURRENCY parts are held in memory
CONCURRENCY = 4


@dataclass
class _Job:
    record: Record
    file: IO[bytes]  # opened at the commit: pruning may unlink the name, not the data
    companions: list[tuple[str, IO[bytes]]]  # likewise (companions.py)

    def close(self) -> None:
        for f in (self.file, *(c for _, c in self.companions)):
            f.close()


class _Hashing:
    """A forward-only reader that hashes what it hands out (non-seekable, so boto3 reads it once,
    in order, and the digest covers exactly the bytes sent)."""

    def __init__(self, f: IO[bytes]) -> None:
        f.seek(0)
        self._f, self.size, self.sha256 = f, 0, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.size += len(data)
        self.sha256.update(data)
        return data


class Uploader:
    def __init__(
        self,
        settings: Settings,
        *,
        rank: int,
        world_size: int,
        base: str,
        keep_max: int,
        on_change: Callable[[Upload], None],
        faults: FaultPlan | None = None,
        clock: Callable[[], float] = time.monotonic,
        companions: Companions | None = None,
    ) -> None:
        self.settings, self.rank, self.world_size = settings, rank, world_size
        self._companions = companions or Companions()
        self._extras: dict[str, bytes] = {}  # small objects to send before the next meta.json
        self._base, self._keep_max, self._on_change = base, keep_max, on_change
        self._faults = faults or FaultPlan()
        self._clock = clock
        self._client: Any = None
        self._remote: list[Record] | None = None  # this rank's meta.json in the store, once read
        self._next: _Job | None = None
        self._waiting: list[tuple[StepKey, float]] = []  # commits not in the store: (step, when)
        self._failures = 0
        self._error: str | None = None
        self._retry_at = 0.0
        self._busy = False
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="store-upload", daemon=True)
        self._thread.start()

    # -- what the checkpointer and the loop call -------------------------------------------------------

    def committed(self, record: Record, path: Path) -> None:
        """A local commit of `path` (its meta.json is in place). Cheap: opens the file, queues it."""
        opened: list[IO[bytes]] = []
        try:
            for p in (path, *(path.with_name(n) for n in self._companions.of(record.file))):
                opened.append(open(p, "rb"))  # noqa: SIM115 (closed by the thread once sent or superseded)
        except OSError as e:  # never the writer's failure: the store only misses this step
            log.error("store: cannot open %s for the upload: %s", e.filename, e.strerror or e)
            for f in opened:
                f.close()
            return
        job = _Job(record, opened[0], list(zip(self._companions.of(record.file), opened[1:], strict=True)))
        with self._cond:
            if self._next is not None:
                self._next.close()  # superseded: the newest commit goes instead
            self._next = job
            self._waiting.append((record.key, self._clock()))
            self._cond.notify()
        self._report()

    def share(self, key: str, data: bytes) -> None:
        """A small object (a strategy file) for the store, sent before the next meta.json."""
        with self._cond:
            self._extras[key] = data

    def close(self, timeout: float) -> bool:
        """Give what is pending at most `timeout` seconds; True if nothing is left unsent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            left = len(self._waiting)
            if self._next is not None and not self._busy:
                self._next.close()
        if left:
            log.warning(
                "store: %d local commit(s) not uploaded at the exit (bound %.0fs); the next start sends one",
                left,
                timeout,
            )
        return not left

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._take()) is not None:
            try:
                self._send(job)
            except Exception as e:
                self._failed(job, e)
            else:
                self._succeeded(job)

    def _take(self) -> _Job | None:
        with self._cond:
            while True:
                now = self._clock()
                # Closing: what waits out a failure is left to the next start (it uploads the newest
                # local commit), so a store that is down costs the exit nothing.
                if self._closing and (self._next is None or self._retry_at > now):
                    return None
                if self._next is not None and now >= self._retry_at:
                    job, self._next, self._busy = self._next, None, True
                    return job
                wait = None if self._next is None else self._retry_at - now
                self._cond.wait(wait)

    def _send(self, job: _Job) -> None:
        if self._client is None:
            self._client = connect(self.settings)
        record, s = job.record, self.settings
        with self._cond:
            extras = dict(self._extras)
        for key, data in extras.items():
            digest = hashlib.sha256(data).hexdigest()
            self._client.put_object(Bucket=s.bucket, Key=key, Body=data, Metadata={SHA256_METADATA: digest})
        with self._cond:
            for key in extras:
                self._extras.pop(key, None)
        remote, protect, listed = self._store_view()
        self._remote = remote
        if any(r.file == record.file and r.sha256 == record.sha256 for r in remote):
            return  # already there (a start announcing its newest commit again)
        for name, f in job.companions:  # before the file: a checkpoint in the store has them
            self._put_companion(name, f)
        self._put_checkpoint(job)
        self._faults.reach("upload_before_meta")
        history = [r for r in remote if r.key < record.key] + [record]
        kept = retained(history, record, self._keep_max, protect)
        self._client.put_object(Bucket=s.bucket, Key=s.key(self.rank, META_FILE), Body=_meta(kept).to_json())
        log.info("store: uploaded %s (global step %d)", record.file, record.global_step)
        self._remote = kept
        names = {r.file for r in kept}
        names |= {c for n in names for c in self._companions.of(n)}
        for name in listed:  # only after the meta.json that no longer names them
            parsed = parse_name(self._companions.owner(name) or name)
            if parsed is not None and in_family(parsed.prefix, self._base) and name not in names:
                self._client.delete_object(Bucket=s.bucket, Key=s.key(self.rank, name))
                log.info("store: pruned %s", name)

    def _put_checkpoint(self, job: _Job) -> None:
        record = job.record
        sent, stored = self._put(record.file, job.file)
        if (sent.size, sent.sha256.hexdigest()) != (record.size, record.sha256) or stored != record.size:
            self._client.delete_object(
                Bucket=self.settings.bucket, Key=self.settings.key(self.rank, record.file)
            )
            raise StoreError(
                f"{record.file}: sent {sent.size} bytes (sha256 {sent.sha256.hexdigest()[:12]}), stored "
                f"{stored}, committed {record.size} (sha256 {record.sha256[:12]}): not committed to the store"
            )

    def _put_companion(self, name: str, f: IO[bytes]) -> None:
        """A companion file, its sha256 in the object's metadata (hashed first, then checked again
        over the bytes sent)."""
        digest, size = hashlib.sha256(), 0
        f.seek(0)  # a try again reads it from the start
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        sent, stored = self._put(name, f, {SHA256_METADATA: digest.hexdigest()})
        if (sent.size, sent.sha256.hexdigest()) != (size, digest.hexdigest()) or stored != size:
            self._client.delete_object(Bucket=self.settings.bucket, Key=self.settings.key(self.rank, name))
            raise StoreError(f"{name}: changed while it was sent, or stored at {stored} of {size} bytes")

    def _put(self, name: str, f: IO[bytes], metadata: dict[str, str] | None = None) -> tuple[_Hashing, int]:
        """Send `f` as this rank's object `name`, hashed as it goes: what was sent, and the stored size."""
        from boto3.s3.transfer import TransferConfig

        s, key, reader = self.settings, self.settings.key(self.rank, name), _Hashing(f)
        config = TransferConfig(
            multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=CONCURRENCY
        )
        extra = {"Metadata": metadata} if metadata else None
        self._client.upload_fileobj(reader, s.bucket, key, ExtraArgs=extra, Config=config)
        return reader, int(self._client.head_object(Bucket=s.bucket, Key=key)["ContentLength"])

    def _store_view(self) -> tuple[list[Record], set[str], list[str]]:
        """This rank's records in the store (its meta.json there); its file of the newest step
        complete on every rank in the store (never pruned); its objects there."""
        with tempfile.TemporaryDirectory(prefix="respawn-store-") as scratch:
            root = Path(scratch)
            view.lay_out(self._client, self.settings, root)
            meta = view.meta_of(root, self.rank)
            listed = sorted(view.sizes(root, self.rank))
            try:
                path = view.newest_complete(root, self.world_size).files.get(self.rank)
            except ResolveError as e:  # as the local pruner: when in doubt, delete nothing
                log.warning("store: cannot tell the newest complete step, pruning nothing: %s", e)
                return (list(meta.checkpoints) if meta else []), set(listed), listed
            protect = {path.name} if path is not None else set()
            return (list(meta.checkpoints) if meta else []), protect, listed

    def _succeeded(self, job: _Job) -> None:
        job.close()
        with self._cond:
            self._busy = False
            self._waiting = [(k, t) for k, t in self._waiting if k > job.record.key]
            self._failures, self._error, self._retry_at = 0, None, 0.0
        self._report()

    def _failed(self, job: _Job, error: Exception) -> None:
        message = str(error) if isinstance(error, StoreError) else describe(error, self.settings)
        with self._cond:
            self._busy = False
            self._failures += 1
            self._error = message
            self._retry_at = self._clock() + min(MAX_BACKOFF, 2.0**self._failures)
            if self._next is None:
                self._next = job  # tried again, unless a newer commit came meanwhile
            else:
                job.close()
        self._client = None  # connect again: the bucket or the credentials may have been fixed
        level = logging.ERROR if self._failures == 1 else logging.WARNING
        log.log(level, "store: upload of %s failed (try %d): %s", job.record.file, self._failures, message)
        self._report()

    def _report(self) -> None:
        with self._cond:
            now = self._clock()
            oldest = min((t for _, t in self._waiting), default=now)
            remote = self._remote[-1].global_step if self._remote else None
            upload = Upload(remote, len(self._waiting), now - oldest, self._failures, self._error)
        self._on_change(upload)


def _meta(history: list[Record]) -> Meta:
    last = history[-1]
    return Meta(last.epoch, last.step, last.file, last.global_step, history)
