"""Names and places of checkpoint files; the one place that knows the on-disk layout.

    output_dir/checkpoint/rank_N/{prefix}_rank_N[_K]-{epoch}_{step}.{ckpt|safetensors}
    output_dir/checkpoint/rank_N/meta.json
    output_dir/checkpoint_network/rank_N/<same names>          (weights only)

`_K` is MindFormers' auto-increment: a new run never reuses a prefix that already has files, so it
never overwrites a file an earlier run may still need. Temporary files start with `.tmp-`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from respawn_protocol import contract
from respawn_protocol.safefs import UnsafePath, check_no_links, scan

EXTENSIONS = ("ckpt", "safetensors")
TEMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^(?P<prefix>[^/\\]+)-(?P<epoch>\d+)_(?P<step>\d+)\.(?P<ext>ckpt|safetensors)$")
_RANK_DIR = re.compile(r"^rank_(\d+)$")
_RANK_IN_PREFIX = re.compile(r"_rank_\d+")


@dataclass(frozen=True, order=True)
class StepKey:
    """Orders checkpoints. Epochs keep counting across dataset changes, so (epoch, step) grows with the
    global step and can be read from a file name alone."""

    epoch: int
    step: int

    def __str__(self) -> str:
        return f"{self.epoch}_{self.step}"


@dataclass(frozen=True)
class CheckpointName:
    prefix: str
    key: StepKey
    ext: str

    @property
    def name(self) -> str:
        return f"{self.prefix}-{self.key.epoch}_{self.key.step}.{self.ext}"


def parse_name(name: str) -> CheckpointName | None:
    if name.startswith("."):
        return None
    m = _NAME.match(name)
    if m is None:
        return None
    return CheckpointName(m["prefix"], StepKey(int(m["epoch"]), int(m["step"])), m["ext"])


def rank_prefix(prefix: str, rank: int) -> str:
    return f"{prefix}_rank_{rank}"


def substitute_rank(name: str, rank: int) -> str:
    """`qwen_rank_0-3_5.ckpt` -> `qwen_rank_1-3_5.ckpt` (the last `_rank_N` in the prefix)."""
    parsed = parse_name(name)
    if parsed is None:
        return name
    matches = list(_RANK_IN_PREFIX.finditer(parsed.prefix))
    if not matches:
        return name
    m = matches[-1]
    prefix = parsed.prefix[: m.start()] + f"_rank_{rank}" + parsed.prefix[m.end() :]
    return CheckpointName(prefix, parsed.key, parsed.ext).name


def in_family(prefix: str, base: str) -> bool:
    """Whether a file prefix belongs to this job's rank prefix, with any auto-increment suffix."""
    return prefix == base or re.fullmatch(re.escape(base) + r"_\d+", prefix) is not None


def next_run_prefix(rank_dir: Path, base: str) -> str:
    """MindFormers' auto-increment: `base`, else `base_1`, `base_2`, ... whichever has no files yet."""
    used: set[str] = set()
    if rank_dir.is_dir():
        for entry in scan(rank_dir):
            parsed = parse_name(entry.name)
            if parsed is not None:
                used.add(parsed.prefix)
    if base not in used:
        return base
    k = 1
    while f"{base}_{k}" in used:
        k += 1
    return f"{base}_{k}"


def rank_dir(root: Path, rank: int) -> Path:
    return root / f"rank_{rank}"


def rank_of_dir(name: str) -> int | None:
    m = _RANK_DIR.match(name)
    return int(m.group(1)) if m else None


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / contract.CHECKPOINT_DIR


def network_root(output_dir: Path) -> Path:
    return output_dir / contract.CHECKPOINT_NETWORK_DIR


def step_log_path(output_dir: Path, rank: int) -> Path:
    return output_dir / contract.STEP_LOG.format(rank=rank)


def is_plain_name(name: str) -> bool:
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and not os.path.isabs(name)
    )


def safe_child(directory: Path, name: str, *, within: Path) -> Path:
    """`directory/name`, refusing names that are not plain and symlinks anywhere below `within`."""
    if not is_plain_name(name):
        raise UnsafePath(f"{name!r} is not a plain file name")
    path = directory / name
    check_no_links(within, path)
    return path
