"""Names and places of checkpoint files; the one place that knows the on-disk layout.

    output_dir/checkpoint/rank_N/{prefix}_rank_N[_K]-{epoch}_{step}.{ckpt|safetensors}
    output_dir/checkpoint/rank_N/meta.json
    output_dir/checkpoint_network/rank_N/{prefix}_rank_N[_K]-network-{epoch}_{step}.{ext}   (weights only)

`_K` is MindSpore's auto-increment: a new run takes the highest `_K` found plus one, so it never
overwrites a file an earlier run may still need, and a higher `_K` is a later run. Weights-only copies
carry MindFormers' `-network` tag; older ones have the full checkpoint's name. Temporary files start
with `.tmp-`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from respawn_protocol import contract
from respawn_protocol.safefs import UnsafePath, check_no_links, scan

EXTENSIONS = ("ckpt", "safetensors")
TEMP_PREFIX = ".tmp-"
_NAME = re.compile(r"^(?P<prefix>[^/\\]+)-(?P<epoch>\d+)_(?P<step>\d+)\.(?P<ext>ckpt|safetensors)$")
_RANK_DIR = re.compile(r"^rank_(\d+)$")
_RANK_IN_PREFIX = re.compile(r"_rank_\d+")
NETWORK_TAG = "-network"  # MindFormers' weights-only files: {prefix}-network-{epoch}_{step}.{ext}
# MindFormers' other copies of a step; never resumed from, but part of the run for pruning.
_TAGS = (NETWORK_TAG, "-trainable_params")


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


def run_prefix(prefix: str) -> str:
    """The run a file belongs to: its prefix without MindFormers' `-network` tag."""
    for tag in _TAGS:
        if prefix.endswith(tag):
            return prefix[: -len(tag)]
    return prefix


def network_name(name: CheckpointName) -> str:
    """The weights-only copy's name, as MindFormers writes it."""
    return CheckpointName(name.prefix + NETWORK_TAG, name.key, name.ext).name


def run_number(prefix: str, base: str) -> int | None:
    """`K` of a prefix in `base`'s family (`base` itself is 0; tags ignored), None outside it."""
    run = run_prefix(prefix)
    if run == base:
        return 0
    m = re.fullmatch(re.escape(base) + r"_(\d+)", run)
    return int(m.group(1)) if m else None


def in_family(prefix: str, base: str) -> bool:
    """Whether a file prefix belongs to this job's rank prefix, with any auto-increment suffix."""
    return run_number(prefix, base) is not None


def next_run_number(directories: Iterable[tuple[Path, str]], start: int = 0) -> int:
    """MindSpore's auto-increment over `(folder, base)` pairs: 0 while no folder has a file of its
    base's family, else the highest `K` found plus one (the base counts as 0). Not the first free
    number: a lower free `K` may have been pruned, and reusing it would order the runs wrongly."""
    k = start
    for directory, base in directories:
        if directory.is_symlink() or not directory.is_dir():
            continue  # never followed (safefs); a trainer's own folder is checked before this
        for entry in scan(directory):
            parsed = parse_name(entry.name)
            n = run_number(parsed.prefix, base) if parsed is not None else None
            if n is not None:
                k = max(k, n + 1)
    return k


def with_run_number(base: str, k: int) -> str:
    return base if k == 0 else f"{base}_{k}"


def next_run_prefix(rank_dir: Path, base: str) -> str:
    """The prefix MindSpore's ModelCheckpoint gives a new run in `rank_dir`."""
    return with_run_number(base, next_run_number([(rank_dir, base)]))


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
