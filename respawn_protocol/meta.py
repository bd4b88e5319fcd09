"""meta.json: the per-rank commit record.

MindFormers readers use `last_epoch`, `last_step` and `last_ckpt_file`. respawn adds the global step and
one integrity record (size, sha256) per retained checkpoint, oldest first, so a reader can check any
file cheaply (size) or fully (digest) and fall back to an older one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from respawn_protocol import safefs
from respawn_protocol.contract import META_FILE
from respawn_protocol.layout import StepKey

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Record:
    file: str
    epoch: int
    step: int
    global_step: int
    size: int
    sha256: str
    network_file: str | None = None
    world_size: int | None = None  # ranks of the gang that wrote this step; None in older records
    attempt: int | None = None  # the controller's attempt (one gang) that wrote it; None outside respawn
    lineage: str | None = None  # the history it belongs to (lineage.py); None in older records

    @property
    def key(self) -> StepKey:
        return StepKey(self.epoch, self.step)


@dataclass
class Meta:
    last_epoch: int
    last_step: int
    last_ckpt_file: str
    last_global_step: int | None = None
    checkpoints: list[Record] = field(default_factory=list)
    # None: not written by respawn (MindFormers' CheckpointMonitor writes only the three last_* keys)
    format_version: int | None = FORMAT_VERSION

    @property
    def key(self) -> StepKey:
        return StepKey(self.last_epoch, self.last_step)

    def to_json(self) -> bytes:
        body: dict[str, Any] = {
            "last_epoch": self.last_epoch,
            "last_step": self.last_step,
            "last_ckpt_file": self.last_ckpt_file,
            "last_global_step": self.last_global_step,
            "format_version": FORMAT_VERSION,
            "checkpoints": [asdict(r) for r in self.checkpoints],
        }
        return (json.dumps(body, indent=1) + "\n").encode()


class MetaError(ValueError):
    pass


def meta_path(rank_dir: Path) -> Path:
    return rank_dir / META_FILE


def read_meta(rank_dir: Path, *, root: Path | None = None) -> Meta | None:
    """None if absent; MetaError if present but unreadable or malformed, a symlink, not a regular
    file, or beyond `safefs.META_MAX_BYTES`. `root`: the directory from which no component of the
    path may be a symlink (default: the rank folder itself)."""
    path = meta_path(rank_dir)
    try:
        raw = json.loads(safefs.read_regular(path, root=root or rank_dir, limit=safefs.META_MAX_BYTES))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise MetaError(f"{path}: {e}") from e
    try:
        return _from_dict(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise MetaError(f"{path}: malformed ({e!r})") from e


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected int, got {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {value!r}")
    return value


def _from_dict(raw: Any) -> Meta:
    if not isinstance(raw, dict):
        raise TypeError("not an object")
    records = []
    for r in raw.get("checkpoints") or []:
        network = r.get("network_file")
        world = r.get("world_size")
        attempt = r.get("attempt")
        lineage = r.get("lineage")
        records.append(
            Record(
                file=_str(r["file"]),
                epoch=_int(r["epoch"]),
                step=_int(r["step"]),
                global_step=_int(r["global_step"]),
                size=_int(r["size"]),
                sha256=_str(r["sha256"]),
                network_file=None if network is None else _str(network),
                world_size=None if world is None else _int(world),
                attempt=None if attempt is None else _int(attempt),
                lineage=None if lineage is None else _str(lineage),
            )
        )
    gs = raw.get("last_global_step")
    version = raw.get("format_version")
    return Meta(
        last_epoch=_int(raw["last_epoch"]),
        last_step=_int(raw["last_step"]),
        last_ckpt_file=_str(raw["last_ckpt_file"]),
        last_global_step=None if gs is None else _int(gs),
        checkpoints=records,
        format_version=None if version is None else _int(version),
    )
