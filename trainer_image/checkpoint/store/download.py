"""Predownload: before the start resolves, bring this rank's file of the newest step complete on every
rank in the store to local disk, if that step is newer than what is complete locally.

The step is chosen by `respawn_protocol.resolve` over the store's listing (view.py). The file is
written as the commit protocol writes one (temp name, its size and sha256 checked against the
store's meta.json while it streams in, fsync, rename), then this rank's local meta.json names it
(atomically, last). An object whose size or digest does not match is never renamed into place: the
next older step complete in the store is tried, and without one the start resolves locally as it
would have anyway. The local resolution that follows (resume.py) is unchanged, and the gang's
agreement settles any rank that could not download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from respawn_protocol import safefs
from respawn_protocol.layout import StepKey, checkpoint_root, rank_dir
from respawn_protocol.meta import Meta, MetaError, Record, meta_path, read_meta
from respawn_protocol.resolve import Check, Resolution, ResolveError, resolve
from trainer_image.checkpoint.commit import FILE_MODE, atomic_write_bytes, publish, temp_path
from trainer_image.checkpoint.confine import make_dir
from trainer_image.checkpoint.merge import STRATEGY_DIR, strategy_path
from trainer_image.checkpoint.store import view
from trainer_image.checkpoint.store.client import Settings, StoreError, connect, describe
from trainer_image.checkpoint.store.companions import SHA256_METADATA, Companions

log = logging.getLogger("trainer_image.store")
READ_CHUNK = 4 << 20


class Mismatch(StoreError):
    """An object that is not what the store's meta.json records: never loaded."""


def local_newest(output_dir: Path, world_size: int, root: Path | None = None) -> StepKey | None:
    """The newest step complete on every rank in `root` (output_dir/checkpoint/; sizes only)."""
    try:
        res = resolve(
            root or checkpoint_root(output_dir),
            True,
            world_size=world_size,
            check=Check.SIZE,
            missing_ok=True,
            resize=True,
        )
    except ResolveError:
        return None
    return res.key


def predownload(
    settings: Settings,
    *,
    output_dir: Path,
    rank: int,
    world_size: int,
    companions: Companions | None = None,
    root: Path | None = None,
) -> StepKey | None:
    """The step downloaded (this rank's file of it and its companions committed locally in `root`,
    default output_dir/checkpoint/), or None: no newer complete step, or StoreError (the reason)."""
    client = connect(settings)
    local = local_newest(output_dir, world_size, root)
    with tempfile.TemporaryDirectory(prefix="respawn-store-") as scratch:
        laid_out = Path(scratch)
        try:
            view.lay_out(client, settings, laid_out)
        except Exception as e:
            raise StoreError(describe(e, settings)) from e
        exclude: set[Path] = set()
        while True:
            try:
                res = view.newest_complete(laid_out, world_size, exclude=exclude, resize=True)
            except ResolveError as e:
                raise StoreError(f"{settings.where()}: {e}") from e
            if res.random_init or res.key is None:
                log.info("store: %s holds no step complete on every rank", settings.where())
                return None
            if local is not None and res.key <= local:
                log.info(
                    "store: local step %s is as new as the store's %s: nothing to download", local, res.key
                )
                return None
            mismatched = _fetch_share(
                client, settings, laid_out, res, rank, world_size, output_dir, companions, root
            )
            if mismatched is None:
                return res.key
            exclude.add(mismatched)


def _fetch_share(
    client: Any,
    settings: Settings,
    laid_out: Path,
    res: Resolution,
    rank: int,
    world_size: int,
    output_dir: Path,
    companions: Companions | None,
    root: Path | None,
) -> Path | None:
    """This rank's files of the step; of a step a gang of another size wrote (auto_trans_ckpt merges
    it), this rank's share of the old ranks' files (old rank r to rank r mod world_size) with their
    strategy files. The first file that does not match (its path in the view, to exclude), or None."""
    resized = res.world_size is not None and res.world_size != world_size
    for old in sorted(r for r in res.files if r % world_size == rank) if resized else [rank]:
        record = record_of(laid_out, old, res.files[old].name)
        try:
            if resized:
                assert res.world_size is not None
                _fetch_strategy(client, settings, output_dir, res.world_size, old)
            fetch(client, settings, record, rank=old, output_dir=output_dir, companions=companions, root=root)
        except Mismatch as e:
            log.warning("store: fell back: %s (not loaded; trying the next older step)", e)
            return res.files[old]
        log.info("store: downloaded %s (global step %d)", record.file, record.global_step)
    return None


def _fetch_strategy(client: Any, settings: Settings, output_dir: Path, world_size: int, rank: int) -> None:
    """The old gang's strategy file of `rank`, replacing any local one (it is the step's)."""
    key = settings.strategy_key(world_size, rank)
    size, sha256 = _companion_digest(client, settings, key)
    if size > safefs.STRATEGY_MAX_BYTES:
        raise Mismatch(f"{key}: {size} bytes, more than a strategy file holds")
    try:
        data = client.get_object(Bucket=settings.bucket, Key=key)["Body"].read(size + 1)
    except Exception as e:
        raise StoreError(describe(e, settings)) from e
    if hashlib.sha256(data).hexdigest() != sha256:
        raise Mismatch(f"{key}: its sha256 is not the one the store records")
    directory = make_dir(output_dir, output_dir / STRATEGY_DIR)
    atomic_write_bytes(strategy_path(directory, rank), data)


def record_of(root: Path, rank: int, name: str) -> Record:
    """The store's commit record of a rank's object, from the laid-out view."""
    meta = view.meta_of(root, rank)
    for r in meta.checkpoints if meta else ():
        if r.file == name:
            return r
    raise StoreError(
        f"the store's rank_{rank}/meta.json does not record {name}"
    )  # resolve took it from there


def fetch(
    client: Any,
    settings: Settings,
    record: Record,
    *,
    rank: int,
    output_dir: Path,
    companions: Companions | None = None,
    root: Path | None = None,
) -> None:
    """This rank's file of `record` committed locally in `root` (output_dir/checkpoint/), its
    companions first: each downloaded unless a local copy has its digest."""
    directory = make_dir(output_dir, rank_dir(root or checkpoint_root(output_dir), rank))
    for name in (companions or Companions()).of(record.file):
        key = settings.key(rank, name)
        size, sha256 = _companion_digest(client, settings, key)
        _bring(client, settings, key, directory / name, size, sha256)
    _bring(
        client, settings, settings.key(rank, record.file), directory / record.file, record.size, record.sha256
    )
    _commit_locally(directory, record)


def _companion_digest(client: Any, settings: Settings, key: str) -> tuple[int, str]:
    """A companion's size and the sha256 its metadata records (Mismatch: missing, or unrecorded)."""
    try:
        head = client.head_object(Bucket=settings.bucket, Key=key)
    except Exception as e:
        if getattr(e, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            raise Mismatch(f"{key} is missing from the store") from e
        raise StoreError(describe(e, settings)) from e
    sha256 = head.get("Metadata", {}).get(SHA256_METADATA)
    if not sha256:
        raise Mismatch(f"{key} has no recorded sha256")
    return int(head["ContentLength"]), sha256


def _bring(client: Any, settings: Settings, key: str, final: Path, size: int, sha256: str) -> None:
    if final.exists():
        if final.stat().st_size == size and _sha256(final) == sha256:
            return
        raise Mismatch(f"{final} exists locally and differs from the store's {final.name}")
    tmp = temp_path(final)
    try:
        _stream(client, settings, key, tmp, size, sha256)
        publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _stream(client: Any, settings: Settings, key: str, tmp: Path, expected: int, sha256: str) -> None:
    digest, size = hashlib.sha256(), 0
    try:
        body = client.get_object(Bucket=settings.bucket, Key=key)["Body"]
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as f:
            for chunk in body.iter_chunks(READ_CHUNK):
                size += len(chunk)
                if size > expected:
                    break
                digest.update(chunk)
                f.write(chunk)
    except Exception as e:
        raise StoreError(describe(e, settings)) from e
    got = digest.hexdigest()
    if size != expected or got != sha256:
        raise Mismatch(
            f"{key}: {'more than ' if size > expected else ''}{size} bytes, sha256 {got[:12]}; "
            f"the store records {expected} bytes, sha256 {sha256[:12]}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _commit_locally(directory: Path, record: Record) -> None:
    """This rank's meta.json with `record` added to what it names (files still there), newest last."""
    try:
        meta = read_meta(directory)
    except MetaError as e:
        log.warning("store: replacing an unreadable local meta.json: %s", e)
        meta = None
    kept = [
        r
        for r in (meta.checkpoints if meta else [])
        if r.file != record.file and (directory / r.file).is_file()
    ]
    history = sorted([*kept, record], key=lambda r: r.key)
    last = history[-1]
    body = Meta(last.epoch, last.step, last.file, last.global_step, history).to_json()
    atomic_write_bytes(meta_path(directory), body)
