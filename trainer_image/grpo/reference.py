"""The frozen reference model: from `ref_checkpoint_path`, or the initial policy saved once.

Without `ref_checkpoint_path`, the first start of a job writes the policy it starts from to
`<save_checkpoint_dir>/ref/rank_N/ref_rank_N-0_0.{ext}` (temp, fsync, rename, then a meta.json
with its size and sha256: the commit record), before any update. Every later start loads that file,
checked against its record, and never writes it again: a damaged or missing reference after the
job has trained is an error, not a silent new reference. Each rank keeps its own copy (the ranks
start from the same policy), so no rank waits for another.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from respawn_protocol.layout import rank_dir
from respawn_protocol.meta import Meta, MetaError, Record, meta_path, read_meta
from respawn_protocol.resolve import Check, ResolveError, resolve
from respawn_protocol.validity import invalid
from trainer_image.checkpoint.commit import (
    atomic_write_bytes,
    publish_and_digest,
    remove_stale_temps,
    temp_path,
)
from trainer_image.checkpoint.confine import make_dir
from trainer_image.config import CheckpointFormat, ConfigError

log = logging.getLogger("trainer_image.grpo")

REF_DIR = "ref"


class ReferenceBackend(Protocol):
    def save_policy_weights(self, path: Path, fmt: CheckpointFormat) -> None: ...
    def load_reference(self, path: Path) -> None: ...


def reference_dir(save_dir: Path, rank: int) -> Path:
    return rank_dir(save_dir / REF_DIR, rank)


def named_reference(ref_checkpoint_path: str, *, rank: int, fmt: CheckpointFormat) -> Path:
    """The file `ref_checkpoint_path` names for this rank: itself, or a `rank_N/` directory's
    newest complete step (this rank's file, else rank 0's: every rank's reference is the same)."""
    try:
        res = resolve(ref_checkpoint_path, True, formats=(fmt,), check=Check.DIGEST)
    except ResolveError as e:
        raise ConfigError(f"ref_checkpoint_path: {e}") from e
    if res.random_init:
        root = Path(ref_checkpoint_path)
        raise ConfigError(
            f"ref_checkpoint_path {root}: no complete {fmt} checkpoint; looked for "
            f"{meta_path(rank_dir(root, 0))} and the files of {rank_dir(root, 0)}"
            + "".join(f"; {w}" for w in res.warnings)
        )
    return res.files.get(rank, res.files[min(res.files)])


def prepare_reference(
    backend: ReferenceBackend,
    *,
    save_dir: Path,
    rank: int,
    fmt: CheckpointFormat,
    ref_checkpoint_path: str,
    fresh: bool,
) -> Path:
    """Load the reference into the backend; returns its file. `fresh`: this start begins from the
    initial policy (no training state resumed), so a missing saved reference may be written now."""
    if ref_checkpoint_path:
        path = named_reference(ref_checkpoint_path, rank=rank, fmt=fmt)
    else:
        directory = make_dir(save_dir, reference_dir(save_dir, rank))
        for stale in remove_stale_temps(directory):
            log.info("removed stale temp file %s", stale)
        path = _saved(directory, fmt) or _save_once(backend, directory, rank, fmt, fresh=fresh)
    backend.load_reference(path)
    log.info("reference model from %s", path)
    return path


def _saved(directory: Path, fmt: CheckpointFormat) -> Path | None:
    try:
        meta = read_meta(directory)
    except MetaError as e:
        raise ConfigError(
            f"the saved reference is unreadable: {e}; restore it or set ref_checkpoint_path"
        ) from e
    if meta is None:
        return None
    record = next((r for r in meta.checkpoints if r.file == meta.last_ckpt_file), None)
    path = directory / meta.last_ckpt_file
    reason = "not recorded" if record is None else invalid(path, record, Check.DIGEST)
    if reason:
        raise ConfigError(
            f"the saved reference {path} is unusable ({reason}); it is never written again once the job "
            "has trained: restore it or set ref_checkpoint_path"
        )
    if not path.name.endswith(f".{fmt}"):
        raise ConfigError(f"the saved reference {path} is not a {fmt} file (load_ckpt_format)")
    return path


def _save_once(
    backend: ReferenceBackend, directory: Path, rank: int, fmt: CheckpointFormat, *, fresh: bool
) -> Path:
    if not fresh:
        raise ConfigError(
            f"no reference model: {meta_path(directory)} does not exist and this start resumes a "
            "training state, whose initial policy is gone; set ref_checkpoint_path"
        )
    final = directory / f"ref_rank_{rank}-0_0.{fmt}"
    tmp = temp_path(final)
    backend.save_policy_weights(tmp, fmt)
    if final.exists():  # written, but a crash came before its record: not to be trusted
        final.unlink()
    sha256 = publish_and_digest(tmp, final)
    record = Record(file=final.name, epoch=0, step=0, global_step=0, size=final.stat().st_size, sha256=sha256)
    atomic_write_bytes(meta_path(directory), Meta(0, 0, final.name, 0, [record]).to_json())
    log.info("saved the initial policy as the reference: %s", final)
    return final
