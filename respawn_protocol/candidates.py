"""What a checkpoint directory offers, per rank: one candidate file per step.

Scanning only lists and reads (meta.json, directory entries, mtimes); whether a candidate is intact
is validity.py's question, and which step to resume from is resolve.py's.

- `rank_folders`: which `rank_N/` folders to read (looked up by name, never by listing the root),
  and the gang size assumed for steps whose records do not say (older meta.json).
- `scan_rank`: a rank's candidates. A step recorded in meta.json is the recorded file; a step on
  disk but unrecorded (a crash before the commit, or no meta.json at all) is its newest file.
  Symlinks (files or rank folders, wherever they lead) are ignored, with a warning; listings are
  bounded (`safefs.scan`).
- `gang_size`, `one_history`: which ranks a step needs, and whether their files belong together.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from respawn_protocol.contract import META_FILE
from respawn_protocol.layout import StepKey, is_plain_name, parse_name, rank_dir
from respawn_protocol.lineage import run_id, run_number
from respawn_protocol.meta import Meta, MetaError, Record, read_meta
from respawn_protocol.safefs import iter_entries, scan

# The CRD's largest gang: 4096 pods x 64 ranks per pod. A rank folder past it is not a rank.
MAX_RANKS = 4096 * 64


@dataclass(frozen=True)
class Candidate:
    path: Path
    key: StepKey
    record: Record | None  # its entry in meta.json; None for a file meta.json does not name


@dataclass
class RankView:
    candidates: dict[StepKey, Candidate]
    meta: Meta | None


def rank_folders(root: Path, world_size: int | None, warnings: list[str]) -> tuple[range, int]:
    """The rank folders to read, and the gang size assumed for steps whose records do not say.

    Looked up by name, never by listing `root`: ranks `0..world_size-1`, then the folders after
    them for as long as each holds checkpoint content (the ranks of an earlier, larger gang), at
    most `MAX_RANKS`. So many empty or unrelated entries in `root` cost nothing."""
    n = world_size or 0
    while n < MAX_RANKS and _has_checkpoint_content(rank_dir(root, n), warnings):
        n += 1
    return range(n), n


def _has_checkpoint_content(directory: Path, warnings: list[str]) -> bool:
    try:
        mode = os.lstat(directory).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        warnings.append(f"{directory} is a symlink; ignored (links are never followed)")
        return False
    if not stat.S_ISDIR(mode):
        return False
    return any(parse_name(e.name) is not None or e.name == META_FILE for e in iter_entries(directory))


def has_loose_checkpoints(root: Path, formats: Collection[str]) -> bool:
    """Checkpoint files directly in `root`, not in `rank_N/` folders."""
    return any((p := parse_name(e.name)) is not None and p.ext in formats for e in iter_entries(root))


def scan_rank(
    root: Path, rank: int, formats: Collection[str], warnings: list[str], run: str | None = None
) -> RankView:
    """A rank's candidates, only of `run` if given; a folder that is a symlink is ignored, with a
    warning."""
    directory = rank_dir(root, rank)
    try:
        mode = os.lstat(directory).st_mode
    except FileNotFoundError:
        return RankView({}, None)
    if stat.S_ISLNK(mode):
        warnings.append(f"{directory} is a symlink; ignored (links are never followed)")
        return RankView({}, None)
    if not stat.S_ISDIR(mode):
        return RankView({}, None)
    entries = scan(directory)
    meta = None
    if any(e.name == META_FILE for e in entries):
        try:
            meta = read_meta(directory, root=root)
        except MetaError as e:
            warnings.append(f"ignoring unreadable meta.json: {e}")
    on_disk = _files_on_disk(entries, formats, warnings, run)
    candidates: dict[StepKey, Candidate] = {}
    for record in _records(meta, directory, formats, warnings):
        if run is not None and run_id(record.file) != run:
            continue
        path = directory / record.file
        if path in on_disk.get(record.key, []):
            candidates[record.key] = Candidate(path, record.key, record)
        else:
            warnings.append(f"rank {rank}: meta.json names {record.file}, which is missing")
    for key, paths in on_disk.items():
        if key not in candidates:
            newest = max(paths, key=lambda p: (_mtime(p), p.name))
            candidates[key] = Candidate(newest, key, None)
    return RankView(candidates, meta if run is None else _meta_within(meta, run))


def _meta_within(meta: Meta | None, run: str) -> Meta | None:
    """A meta.json seen from one run, whose (epoch, step) numbering is its own: one naming a later
    run has passed this run (None: it bounds nothing), one naming an earlier run has committed
    nothing of it (step 0_0)."""
    named = run_id(meta.last_ckpt_file) if meta is not None else None
    if meta is None or named is None or named == run:
        return meta
    if run_number(named) > run_number(run):
        return None
    return Meta(0, 0, meta.last_ckpt_file, format_version=meta.format_version)


def _files_on_disk(
    entries: list[os.DirEntry[str]], formats: Collection[str], warnings: list[str], run: str | None
) -> dict[StepKey, list[Path]]:
    """The rank folder's checkpoint files of the wanted formats (and run), by step; symlinks are
    ignored."""
    on_disk: dict[StepKey, list[Path]] = {}
    for entry in entries:
        parsed = parse_name(entry.name)
        if parsed is None or parsed.ext not in formats or (run is not None and run_id(entry.name) != run):
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            warnings.append(f"{path} is a symlink; ignored (links are never followed)")
            continue
        if entry.is_file(follow_symlinks=False):
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
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def gang_size(views: dict[int, RankView], key: StepKey, legacy: int) -> int:
    """How many ranks wrote step `key`: from the lowest rank whose meta.json records it, else `legacy`
    (the rank folders `rank_folders` found; older records do not say)."""
    for rank in sorted(views):
        candidate = views[rank].candidates.get(key)
        if candidate is not None and candidate.record is not None and candidate.record.world_size:
            return candidate.record.world_size
    return legacy


def one_history(chosen: list[Candidate]) -> bool:
    """The ranks' files of a step come from one start of one gang (lineage.py). Steps are rewritten
    after a resume, so a rank can still list a step of an abandoned branch, or of an earlier
    attempt, that another rank has just written anew; after a resize the two can even hold
    different training states under the same step number.

    Recorded files pair when their records name one lineage (files of older records, which name
    none, pair only with each other) and one attempt where they say. A step with an unrecorded
    file (written but not committed, or a MindFormers directory) also needs one run prefix."""
    recorded = [c.record for c in chosen if c.record is not None]
    if len({r.lineage for r in recorded}) > 1:
        return False
    attempts = {r.attempt for r in recorded if r.attempt is not None}
    if len(attempts) > 1:
        return False
    return len(recorded) == len(chosen) or len({run_id(c.path.name) for c in chosen}) == 1


def runs_newest_first(views: Iterable[RankView]) -> list[str]:
    """The runs with files in these views, later starts first (MindSpore numbers them upwards);
    among equal numbers, a run some meta.json names first."""
    views = list(views)
    runs = {run_id(c.path.name) for v in views for c in v.candidates.values()} - {None}
    named = {run_id(v.meta.last_ckpt_file) for v in views if v.meta is not None}
    return sorted((r for r in runs if r is not None), key=lambda r: (-run_number(r), r not in named, r))
