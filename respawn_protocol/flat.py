"""Checkpoint directories without `rank_N/` folders, as `load_checkpoint` may name them.

- **A merged checkpoint** (`output_dir/unified_checkpoint/`, written by auto_trans_ckpt,
  trainer_image/checkpoint/merge.py): its meta.json names one full checkpoint of one step, with its
  size and sha256 and the shards it came from. Every rank loads that file, whatever the world size.
- **MindSpore's merged safetensors** (`mindspore.parallel.unified_safetensors`, what MindFormers
  writes to `output/unified_checkpoint/` with auto_trans_ckpt): `param_name_map.json` maps every
  parameter to one of the `partK.safetensors` files; `hyper_param.safetensors` holds the rest (the
  optimizer step, extras). Together one full checkpoint, loaded by every rank.
- **A flat folder** (ModelArts' `train_url`: MindSpore's `ModelCheckpoint` writing one rank's
  `{prefix}-{epoch}_{step}.ckpt` files into one directory): the files of one rank, newest first by
  (epoch, step), then by mtime. Weights-only copies (`-network`) are not resume points.

Listing and reading only, like candidates.py; resolve.py chooses.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from respawn_protocol import safefs
from respawn_protocol.contract import META_FILE
from respawn_protocol.layout import StepKey, is_plain_name, parse_name, run_prefix
from respawn_protocol.meta import Record


@dataclass(frozen=True)
class Unified:
    """A merged checkpoint's meta.json."""

    file: str
    key: StepKey
    size: int
    sha256: str
    source_world_size: int

    def record(self) -> Record:
        """As a meta.json record, for validity.invalid (size, sha256)."""
        return Record(self.file, self.key.epoch, self.key.step, 0, self.size, self.sha256)


def read_unified(root: Path) -> Unified | None:
    """The merged checkpoint `root/meta.json` describes; None if there is none (no meta.json, or a
    rank's commit record copied there). ValueError for one that is unreadable or malformed."""
    try:
        raw = json.loads(safefs.read_regular(root / META_FILE, root=root, limit=safefs.META_MAX_BYTES))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{root / META_FILE}: {e.strerror}") from e
    if not isinstance(raw, dict) or "sources" not in raw:
        return None
    try:
        return Unified(
            file=str(raw["file"]),
            key=StepKey(int(raw["epoch"]), int(raw["step"])),
            size=int(raw["size"]),
            sha256=str(raw["sha256"]),
            source_world_size=int(raw["source_world_size"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{root / META_FILE}: not a merged checkpoint's record ({e!r})") from e


def loose_files(root: Path, formats: Collection[str], warnings: list[str]) -> list[tuple[StepKey, Path]]:
    """The checkpoint files directly in `root` with their steps, newest first; symlinks ignored,
    with a warning."""
    found: list[tuple[StepKey, float, str, Path]] = []
    for entry in safefs.iter_entries(root):
        parsed = parse_name(entry.name)
        if parsed is None or parsed.ext not in formats or run_prefix(parsed.prefix) != parsed.prefix:
            continue
        if entry.is_symlink():
            warnings.append(f"{entry.path} is a symlink; ignored (links are never followed)")
        elif entry.is_file(follow_symlinks=False):
            found.append(
                (parsed.key, entry.stat(follow_symlinks=False).st_mtime, entry.name, Path(entry.path))
            )
    return [(key, path) for key, *_, path in sorted(found, reverse=True)]


PARAM_NAME_MAP = "param_name_map.json"  # MindSpore's unified_safetensors index
HYPER_PARAM = "hyper_param.safetensors"


def sharded_parts(root: Path) -> list[Path] | None:
    """The files of MindSpore's merged safetensors in `root` (the parts `param_name_map.json`
    names, then `hyper_param.safetensors` if present); None without an index. ValueError for an
    index that is unreadable or names anything but plain `.safetensors` names."""
    try:
        raw = json.loads(safefs.read_regular(root / PARAM_NAME_MAP, root=root, limit=safefs.META_MAX_BYTES))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{root / PARAM_NAME_MAP}: {e.strerror}") from e
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{root / PARAM_NAME_MAP}: no weight_map")
    names = sorted({str(v) for v in weight_map.values()})
    if not all(is_plain_name(n) and n.endswith(".safetensors") for n in names):
        raise ValueError(f"{root / PARAM_NAME_MAP}: names files other than plain .safetensors names")
    parts = [root / n for n in names]
    if (root / HYPER_PARAM).exists() or (root / HYPER_PARAM).is_symlink():
        parts.append(root / HYPER_PARAM)
    return parts
