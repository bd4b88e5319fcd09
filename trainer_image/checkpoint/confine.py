"""The trainer writes and prunes only below its output directory, through real directories.

Its own folders (`checkpoint/rank_N`, `checkpoint_network/rank_N`, `log/rank_N`, and the shared
`strategy/`, `unified_checkpoint/`) must be directories, not symlinks, wherever a symlink would lead
(respawn_protocol/safefs.py: links below a root are never followed). Finding one is a permanent
configuration error (exit 78) raised before anything is written or deleted.
"""

from __future__ import annotations

from pathlib import Path

from respawn_protocol import safefs
from respawn_protocol.layout import checkpoint_root, network_root, rank_dir, step_log_path
from respawn_protocol.steplog import StepLog
from trainer_image.checkpoint.commit import DIR_MODE, make_dirs
from trainer_image.config import ConfigError

# Shared by the gang (use_parallel, auto_trans_ckpt); the names are merge.py's.
SHARED_DIRS = ("strategy", "unified_checkpoint")


def own_dirs(output_dir: Path, rank: int) -> list[Path]:
    return [
        rank_dir(checkpoint_root(output_dir), rank),
        rank_dir(network_root(output_dir), rank),
        step_log_path(output_dir, rank).parent,
        *(output_dir / name for name in SHARED_DIRS),
    ]


def check_output_dir(output_dir: Path, rank: int) -> None:
    """ConfigError if a folder this rank writes to, or its step log, is a symlink or not a
    directory (a regular file for the log). Checks only; creates nothing."""
    try:
        for directory in own_dirs(output_dir, rank):
            safefs.ensure_dir(output_dir, directory, create=False)
        log = step_log_path(output_dir, rank)
        safefs.check_no_links(output_dir, log)
        if log.exists():
            safefs.lstat_regular(log)
    except safefs.UnsafeFile as e:
        raise _refused(output_dir, e) from e


def make_dir(output_dir: Path, directory: Path) -> Path:
    """`directory` (below `output_dir`) created as real directories, or ConfigError."""
    make_dirs(output_dir)  # the root is trusted as given
    try:
        safefs.ensure_dir(output_dir, directory, mode=DIR_MODE)
    except safefs.UnsafeFile as e:
        raise _refused(output_dir, e) from e
    return directory


def open_step_log(output_dir: Path, rank: int) -> StepLog:
    """This rank's steps.jsonl, appended to through real directories only, or ConfigError."""
    make_dirs(output_dir)
    try:
        return StepLog(step_log_path(output_dir, rank), root=output_dir)
    except safefs.UnsafeFile as e:
        raise _refused(output_dir, e) from e


def _refused(output_dir: Path, e: safefs.UnsafeFile) -> ConfigError:
    return ConfigError(f"output_dir {output_dir}: {e}; refusing to write or prune through it")
