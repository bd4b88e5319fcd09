"""What a checkpoint directory offers, per rank: one candidate file per step.

Scanning only lists and reads (meta.json, directory entries, mtimes); whether a candidate is intact
is validity.py's question, and which step to resume from is resolve.py's.

- `rank_folders`: which `rank_N/` folders to read, and the gang size assumed for steps whose
  records do not say (older meta.json).
- `scan_rank`: a rank's candidates. A step recorded in meta.json is the recorded file; a step on
  disk but unrecorded (a crash before the commit, or no meta.json at all) is its newest file.
  Symlinks leading outside the directory are ignored, with a warning.
- `gang_size`, `one_attempt`: which ranks a step needs, and whether their files belong together.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from respawn_protocol.layout import StepKey, is_inside, is_plain_name, parse_name, rank_dir, rank_of_dir
from respawn_protocol.meta import Meta, MetaError, Record, read_meta


@dataclass(frozen=True)
class Candidate:
    path: Path
    key: StepKey
    record: Record | None  # its entry in meta.json; None for a file meta.json does not name


@dataclass
class RankView:
    candidates: dict[StepKey, Candidate]
    meta: Meta | None


def rank_folders(root: Path, world_size: int | None) -> tuple[range, int]:
    """The rank folders to read, and the gang size assumed for steps whose records do not say."""
    found: dict[int, bool] = {}
    for entry in os.scandir(root):
        rank = rank_of_dir(entry.name)
        if rank is not None and entry.is_dir() and is_inside(Path(entry.path), root):
            found[rank] = _has_checkpoint_content(Path(entry.path))
    if world_size is None:
        n = max(found) + 1 if found else 0
        return range(n), n
    with_content = max((r for r, content in found.items() if content), default=-1) + 1
    n = max(world_size, with_content)
    return range(n), n


def _has_checkpoint_content(directory: Path) -> bool:
    return any(parse_name(n) is not None or n == "meta.json" for n in os.listdir(directory))


def has_loose_checkpoints(root: Path, formats: Collection[str]) -> bool:
    """Checkpoint files directly in `root`, not in `rank_N/` folders."""
    return any((p := parse_name(n)) is not None and p.ext in formats for n in os.listdir(root))


def scan_rank(root: Path, rank: int, formats: Collection[str], warnings: list[str]) -> RankView:
    directory = rank_dir(root, rank)
    if not directory.is_dir():
        return RankView({}, None)
    if not is_inside(directory, root):
        warnings.append(f"{directory} leads outside {root}; ignored")
        return RankView({}, None)
    try:
        meta = read_meta(directory)
    except MetaError as e:
        warnings.append(f"ignoring unreadable meta.json: {e}")
        meta = None
    on_disk = _files_on_disk(root, directory, formats, warnings)
    candidates: dict[StepKey, Candidate] = {}
    for record in _records(meta, directory, formats, warnings):
        path = directory / record.file
        if path in on_disk.get(record.key, []):
            candidates[record.key] = Candidate(path, record.key, record)
        else:
            warnings.append(f"rank {rank}: meta.json names {record.file}, which is missing")
    for key, paths in on_disk.items():
        if key not in candidates:
            newest = max(paths, key=lambda p: (_mtime(p), p.name))
            candidates[key] = Candidate(newest, key, None)
    return RankView(candidates, meta)


def _files_on_disk(
    root: Path, directory: Path, formats: Collection[str], warnings: list[str]
) -> dict[StepKey, list[Path]]:
    """The rank folder's checkpoint files of the wanted formats, by step."""
    on_disk: dict[StepKey, list[Path]] = {}
    for entry in os.scandir(directory):
        parsed = parse_name(entry.name)
        if parsed is None or parsed.ext not in formats:
            continue
        path = Path(entry.path)
        if entry.is_symlink() and not is_inside(path, root):
            warnings.append(f"{path} is a symlink leading outside {root}; ignored")
            continue
        if entry.is_file():
            on_disk.setdefault(parsed.key, []).append(path)
    return on_disk


def _records(
    meta: Meta | None, directory: Path, formats: Collection[str], warnings: list[str]
) -> Iterable[Record]:
    if meta is None:
        return []
    out = []
    for record in meta.checkpoints:
        parsed = parse_name(record.file) if is_plain_name(record.file) else None
        if parsed is None or parsed.key != record.key:
            warnings.append(f"{directory}/meta.json: ignoring bad entry {record.file!r}")
        elif parsed.ext in formats:
            out.append(record)
    if not is_plain_name(meta.last_ckpt_file):
        warnings.append(f"{directory}/meta.json: last_ckpt_file {meta.last_ckpt_file!r} is not a plain name")
    return out


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def gang_size(views: dict[int, RankView], key: StepKey, legacy: int) -> int:
    """How many ranks wrote step `key`: from the lowest rank whose meta.json records it, else `legacy`
    (every rank folder; older records do not say)."""
    for rank in sorted(views):
        candidate = views[rank].candidates.get(key)
        if candidate is not None and candidate.record is not None and candidate.record.world_size:
            return candidate.record.world_size
    return legacy


def one_attempt(chosen: list[Candidate]) -> bool:
    """The ranks' files of a step come from one gang. Steps are rewritten after a resume, so a rank
    can still list a step from an earlier attempt that another rank has just written anew; after a
    resize the two can even hold different training states under the same step number."""
    attempts = {c.record.attempt for c in chosen if c.record is not None and c.record.attempt is not None}
    return len(attempts) <= 1
