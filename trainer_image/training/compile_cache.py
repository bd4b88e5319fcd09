"""MindSpore's compile cache, keyed by everything that shapes the graphs and published whole.

MindSpore 2.10 (`MS_COMPILER_CACHE_ENABLE`, `MS_COMPILER_CACHE_PATH`) files the compiled graphs of a
process as `rank_<r>/graph_cache/compile_cache_<n>.mindir`, n counting the process's compiles, and
trusts them when the sha256 of the entry script (and of the modules it imports that are not on
sys.path: for `python -m trainer_image`, none) matches. Nothing else is in that key. Two jobs whose
models differ therefore load each other's graphs from a shared directory: the first step fails
(`For 'AdamWeightDecay', the dtype and shape of 'grad' and 'var' must be the same`), or, when only a
constant baked into the graph differs (the learning rate, the LR schedule's length), trains silently
with the other job's constant. MindSpore also writes the files in place, so a reader can meet a
half-written one.

So here every entry is a directory `<root>/<key>/` whose key hashes the config (minus paths), the
resolved LR length, the rank layout, the MindSpore and Python versions, the entry script and the
trainer's own sources. A process never points MindSpore at an entry: on a hit it copies the files,
checking each against the entry's manifest, into a private working directory; on a miss MindSpore
writes into an empty private directory, which is published after the first step by writing its
manifest (temp + fsync + rename) and renaming the whole directory to `<root>/<key>` (atomic, and it
never replaces an entry another process published first). A writer killed at any point leaves only
a private directory, removed by a later start once it is an hour old; an entry that fails its
manifest is removed and the start compiles as on a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

from trainer_image.checkpoint.commit import fsync_dir, fsync_file
from trainer_image.config import TrainerConfig, to_dict

log = logging.getLogger("trainer_image.training.compile_cache")

ENV_DIR = "RESPAWN_COMPILE_CACHE_DIR"  # the cache root; default <tempdir>/respawn-compile-cache
ENV_SWITCH = "RESPAWN_COMPILE_CACHE"  # "off" (or 0/false/no) turns the cache off
MS_ENABLE = "MS_COMPILER_CACHE_ENABLE"
MS_PATH = "MS_COMPILER_CACHE_PATH"
MANIFEST = "respawn-manifest.json"
FORMAT = 1  # of the entry layout and the manifest
WORK_PREFIX = ".work-"
TRASH_PREFIX = ".trash-"
STALE_WORK_SECONDS = 3600.0  # a private directory this old belongs to a process that is gone
UNUSED_ENTRY_SECONDS = 14 * 86400.0  # entries not hit for this long are removed
# What changes nothing in the graphs, and may change between attempts: paths, the start's source,
# the checkpoint callbacks (a save interval handed to the next attempt), the number of epochs (the
# LR schedule's length, which is in the graph, goes into the key resolved).
_NOT_IN_KEY = ("output_dir", "load_checkpoint", "resume_training", "src_strategy_path_or_dir", "callbacks")
_used_in_process = False  # MindSpore keeps the first cache path and compile counter of a process


class CorruptEntry(Exception):
    """An entry that does not match its manifest."""


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get(ENV_SWITCH, "").strip().lower() not in ("off", "0", "false", "no")


def cache_root(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(ENV_DIR) or Path(tempfile.gettempdir()) / "respawn-compile-cache")


def key_of(
    config: TrainerConfig, *, total_steps: int, rank: int, world_size: int, data_parallel: bool
) -> tuple[str, dict[str, Any]]:
    """The entry's key and what went into it (kept in the manifest, to tell a key apart)."""
    import mindspore

    graph_config = {k: v for k, v in to_dict(config).items() if k not in _NOT_IN_KEY}
    graph_config["train_dataset"]["data_loader"].pop("dataset_dir", None)
    graph_config["runner_config"].pop("epochs", None)
    parts = {
        "format": FORMAT,
        "config": graph_config,
        "total_steps": total_steps,
        "rank": rank,
        "world_size": world_size,
        "data_parallel": data_parallel,
        "mindspore": mindspore.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "entry_script": _file_digest(Path(sys.argv[0])) if sys.argv and sys.argv[0] else "",
        "trainer_sources": _sources_digest(Path(__file__).resolve().parents[1]),
    }
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:32], parts


class CompileCache:
    """One start's use of the cache: `open` before the first compile, `published` after the first
    step, `close` at the end."""

    def __init__(
        self,
        root: Path,
        key: str,
        parts: dict[str, Any],
        work: Path,
        *,
        hit: bool,
        environ: MutableMapping[str, str] | None = None,
    ) -> None:
        self.root, self.key, self.parts, self.work, self.hit = root, key, parts, work, hit
        self._environ = environ
        self._saved = {name: None if environ is None else environ.get(name) for name in (MS_ENABLE, MS_PATH)}

    @classmethod
    def open(
        cls,
        config: TrainerConfig,
        *,
        total_steps: int,
        rank: int,
        world_size: int,
        data_parallel: bool,
        environ: MutableMapping[str, str],
    ) -> CompileCache | None:
        """Point MindSpore at a private copy of this key's entry (or an empty directory); None when
        the cache is off, was used by this process already, or its root is unusable (the start then
        compiles in full, as without a cache)."""
        global _used_in_process
        if not enabled(environ) or _used_in_process:
            return None
        _used_in_process = True
        root = cache_root(environ)
        key, parts = key_of(
            config, total_steps=total_steps, rank=rank, world_size=world_size, data_parallel=data_parallel
        )
        try:
            root.mkdir(parents=True, exist_ok=True)
            _prune(root)
            work = root / f"{WORK_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            work.mkdir()
            hit = _copy_entry(root / key, work)
        except OSError as e:
            log.warning("compile cache off for this start: %s is unusable: %s", root, e)
            return None
        cache = cls(root, key, parts, work, hit=hit, environ=environ)
        environ[MS_ENABLE] = "1"
        environ[MS_PATH] = str(work)
        log.info("compile cache %s: %s", "hit" if hit else "miss", root / key)
        return cache

    def publish(self) -> None:
        """After the first step (every graph compiled and written by MindSpore): on a miss, make the
        private directory this key's entry. Never fails the training; never replaces an entry."""
        if self.hit or not self.work.exists():
            return
        try:
            files = _manifest_files(self.work)
            if not any(p.endswith("compile_cache_0.mindir") for p in files):
                log.info("compile cache: MindSpore wrote no graph; nothing to publish")
                return
            manifest = {"format": FORMAT, "key": self.key, "parts": self.parts, "files": files}
            _write_manifest(self.work, manifest)
            os.rename(self.work, self.root / self.key)
            fsync_dir(self.root)
            log.info("compile cache: published %s", self.root / self.key)
        except OSError as e:  # another process published this key first, or the disk is full
            log.info("compile cache: %s not published: %s", self.root / self.key, e)

    def finish(self) -> None:
        """After the first step: publish (on a miss), then drop the private directory, whose graphs
        MindSpore has loaded."""
        self.publish()
        self.close()

    def close(self) -> None:
        """Remove the private directory (a published one is no longer there) and give the MindSpore
        variables back their values: a later compile of this process caches nothing."""
        shutil.rmtree(self.work, ignore_errors=True)
        if self._environ is not None:
            for name, value in self._saved.items():
                if value is None:
                    self._environ.pop(name, None)
                else:
                    self._environ[name] = value
            self._environ = None


# ------------------------------------------------------------------------------------------ entries


def _copy_entry(entry: Path, work: Path) -> bool:
    """Copy a valid entry's files into `work`; False (and the entry removed) when there is none or it
    does not match its manifest."""
    if not entry.exists():
        return False
    try:
        manifest = json.loads((entry / MANIFEST).read_bytes())
    except (OSError, ValueError) as e:
        _discard(entry, f"unreadable manifest: {e}", work)
        return False
    try:
        _copy_checked(entry, work, manifest)
    except CorruptEntry as e:
        _discard(entry, str(e), work)
        return False
    with contextlib.suppress(OSError):  # another user's entry: used, but its age stays the writer's
        os.utime(entry / MANIFEST)  # last hit: what pruning goes by
    return True


def _copy_checked(entry: Path, work: Path, manifest: Any) -> None:
    if not isinstance(manifest, dict) or (manifest.get("format"), manifest.get("key")) != (
        FORMAT,
        entry.name,
    ):
        raise CorruptEntry("the manifest is not this entry's")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise CorruptEntry("the manifest lists no files")
    for rel, want in files.items():
        src, dst = entry / rel, work / rel
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not isinstance(want, dict):
            raise CorruptEntry(f"bad manifest item {rel!r}")
        try:
            data = src.read_bytes()
        except OSError as e:
            raise CorruptEntry(f"{rel}: {e}") from e
        if len(data) != want.get("size") or hashlib.sha256(data).hexdigest() != want.get("sha256"):
            raise CorruptEntry(f"{rel} does not match the manifest")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(data)


def _discard(entry: Path, why: str, work: Path) -> None:
    log.warning("compile cache: ignoring %s (%s); compiling in full", entry, why)
    for child in work.iterdir():
        shutil.rmtree(child, ignore_errors=True)
    trash = entry.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}")
    try:
        os.rename(entry, trash)  # atomic: no other start copies from it any more
    except OSError:
        return  # another start moved it first
    shutil.rmtree(trash, ignore_errors=True)


def _manifest_files(work: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for path in sorted(p for p in work.rglob("*") if p.is_file()):
        fsync_file(path)
        data = path.read_bytes()
        files[str(path.relative_to(work))] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for directory in sorted({p.parent for p in work.rglob("*")} | {work}, reverse=True):
        fsync_dir(directory)
    return files


def _write_manifest(work: Path, manifest: dict[str, Any]) -> None:
    tmp = work / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, sort_keys=True, indent=1))
    fsync_file(tmp)
    os.rename(tmp, work / MANIFEST)
    fsync_dir(work)


def _prune(root: Path, now: float | None = None) -> None:
    """Remove private directories of processes long gone, trash, and entries unused for weeks."""
    now = time.time() if now is None else now
    for child in root.iterdir():
        try:
            if child.name.startswith((WORK_PREFIX, TRASH_PREFIX)):
                age = now - child.stat().st_mtime
                if age > STALE_WORK_SECONDS or (child.name.startswith(TRASH_PREFIX) and age > 60):
                    shutil.rmtree(child, ignore_errors=True)
            elif now - (child / MANIFEST).stat().st_mtime > UNUSED_ENTRY_SECONDS:
                _discard_unused(child)
        except OSError:
            continue  # gone meanwhile, or no manifest: not ours to judge


def _discard_unused(entry: Path) -> None:
    trash = entry.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}")
    try:
        os.rename(entry, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


# ------------------------------------------------------------------------------------------ digests


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _sources_digest(package: Path) -> str:
    """The trainer's own code: the graphs are built by it (model.py, backend.py, and what they use)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()
