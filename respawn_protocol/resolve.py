"""Which checkpoint to resume from: one pure function over a checkpoint directory.

Read-only and light (no MindSpore): the controller calls it on a read-only mount whenever a meta.json
changes, with `Check.SIZE` (one stat per file); the trainer calls it with `Check.DIGEST` (sha256 of the
recorded files) right before loading.

Rules, in MindFormers' terms:
- `load_checkpoint` names a file: full weights, the same file for every rank.
- `load_checkpoint` names a directory of `rank_N/` folders:
  - `resume_training: True` (or False, which loads weights only): the newest step that is committed
    (at or before the minimum over ranks of meta.json's last step) and valid on every rank, its files
    written by one attempt where meta.json says. Without any meta.json, the newest step present and
    valid on every rank.
  - `resume_training: <file name>`: that step, with the rank substituted per rank; an error if any rank
    lacks it or holds a damaged copy.
  - Nothing there (empty, or only empty `rank_N/` folders): random initialisation.
- A damaged file or a meta.json naming a missing file makes it fall back to the next older complete step,
  with a warning. Random initialisation happens only when no complete step exists at all.
- No name from config or meta.json may lead outside the directory.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from respawn_protocol.digest import sha256_file
from respawn_protocol.layout import (
    EXTENSIONS,
    StepKey,
    UnsafePath,
    is_inside,
    is_plain_name,
    parse_name,
    rank_dir,
    rank_of_dir,
    safe_child,
    substitute_rank,
)
from respawn_protocol.meta import Meta, MetaError, Record, read_meta

_MAX_SAFETENSORS_HEADER = 100 << 20


class Check(enum.Enum):
    EXISTS = "exists"
    SIZE = "size"  # one stat per file (plus the header of an unrecorded safetensors file)
    DIGEST = "digest"  # size, then sha256 of every recorded file


class ResolveError(ValueError):
    """The request cannot be satisfied as given (bad name, missing step). Permanent."""


@dataclass(frozen=True)
class Resolution:
    source: Literal["none", "file", "directory"]
    files: dict[int, Path] = field(default_factory=dict)  # rank -> file; empty means random init
    key: StepKey | None = None
    global_step: int | None = None
    warnings: tuple[str, ...] = ()
    world_size: int | None = None  # ranks of the gang that wrote the step (None: a single full file)

    @property
    def random_init(self) -> bool:
        return not self.files


@dataclass(frozen=True)
class _Candidate:
    path: Path
    key: StepKey
    record: Record | None


@dataclass
class _RankView:
    candidates: dict[StepKey, _Candidate]
    meta: Meta | None


def resolve(
    load_checkpoint: str | os.PathLike[str],
    resume_training: bool | str,
    *,
    world_size: int | None = None,
    formats: Collection[str] = EXTENSIONS,
    check: Check = Check.DIGEST,
    missing_ok: bool = False,
    exclude: Collection[Path] = (),
    at_most: StepKey | None = None,
    resize: bool = False,
) -> Resolution:
    """Resolve `load_checkpoint` + `resume_training` to one file per rank of the gang that wrote it.

    `world_size=None` discovers the ranks from the `rank_N/` folders. `missing_ok` treats a
    nonexistent directory as empty (the job's own checkpoint directory before the first save).
    `exclude` lists files that failed to load, so the next older step is chosen. `at_most` ignores
    steps newer than it (the ranks of a gang agreeing on the oldest of their answers). A step written
    by a gang of another size than `world_size` is an error unless `resize` (auto_trans_ckpt).
    """
    if not str(load_checkpoint):
        return Resolution("none")
    root = Path(load_checkpoint)
    if root.is_file():
        return _resolve_file(root, world_size, formats)
    if not root.is_dir():
        if missing_ok and not root.exists():
            return Resolution("none")
        raise ResolveError(f"load_checkpoint {root} does not exist")
    scanned, legacy = _ranks(root, world_size)
    warnings: list[str] = []
    if isinstance(resume_training, str):
        res = _resolve_named(root, resume_training, scanned, legacy, formats, check, warnings)
    else:
        res = _resolve_latest(root, scanned, legacy, formats, check, set(exclude), warnings, at_most)
    if world_size is not None and res.world_size not in (None, world_size) and not resize:
        raise ResolveError(
            f"{root}: step {res.key} was written by {res.world_size} ranks but the world size is "
            f"{world_size}; changing the world size needs auto_trans_ckpt: True"
        )
    return res


def last_complete(checkpoint_dir: str | os.PathLike[str], *, world_size: int | None = None) -> Resolution:
    """The controller's question: the newest step complete on every rank, checked cheaply."""
    return resolve(
        checkpoint_dir, True, world_size=world_size, check=Check.SIZE, missing_ok=True, resize=True
    )


# ------------------------------------------------------------------------------------------------ cases


def _resolve_file(path: Path, world_size: int | None, formats: Collection[str]) -> Resolution:
    ext = path.suffix.lstrip(".")
    if ext not in formats:
        raise ResolveError(f"load_checkpoint {path}: expected a {' or '.join(formats)} file")
    reason = _invalid(_Candidate(path, StepKey(0, 0), None), Check.SIZE)
    if reason:
        raise ResolveError(f"load_checkpoint {path}: {reason}")
    parsed = parse_name(path.name)
    ranks = range(world_size or 1)
    return Resolution("file", {r: path for r in ranks}, parsed.key if parsed else None)


def _resolve_named(
    root: Path,
    name: str,
    scanned: range,
    legacy: int,
    formats: Collection[str],
    check: Check,
    warnings: list[str],
) -> Resolution:
    parsed = parse_name(name) if is_plain_name(name) else None
    if parsed is None:
        raise ResolveError(f"resume_training {name!r}: expected a file name like PREFIX-EPOCH_STEP.ckpt")
    if parsed.ext not in formats:
        raise ResolveError(f"resume_training {name!r}: load_ckpt_format expects {' or '.join(formats)}")
    if not scanned:
        raise ResolveError(f"resume_training {name!r}: {root} holds no rank_N directories")
    views = {r: _scan_rank(root, r, formats, warnings) for r in scanned}
    gang = _gang_size({r: v for r, v in views.items() if _named(v, name, r)}, parsed.key, legacy)
    files: dict[int, Path] = {}
    problems: list[str] = []
    global_step = None
    for rank in range(gang):
        wanted = substitute_rank(name, rank)
        try:
            path = safe_child(rank_dir(root, rank), wanted, within=root)
        except UnsafePath as e:
            raise ResolveError(f"resume_training {name!r}: {e}") from e
        if not path.is_file():
            problems.append(f"rank {rank}: {wanted} is missing")
            continue
        view = views.get(rank) or _RankView({}, None)
        record = next((c.record for c in view.candidates.values() if c.path == path and c.record), None)
        reason = _invalid(_Candidate(path, parsed.key, record), check)
        if reason:
            problems.append(f"rank {rank}: {wanted}: {reason}")
        files[rank] = path
        if record is not None:
            global_step = record.global_step
    if problems:
        raise ResolveError(f"resume_training {name!r} is not usable: " + "; ".join(problems))
    return Resolution("directory", files, parsed.key, global_step, tuple(warnings), gang)


def _named(view: _RankView, name: str, rank: int) -> bool:
    """Whether this rank's candidate for the named step is the file the name asks for."""
    wanted = substitute_rank(name, rank)
    return any(c.path.name == wanted for c in view.candidates.values())


def _resolve_latest(
    root: Path,
    scanned: range,
    legacy: int,
    formats: Collection[str],
    check: Check,
    exclude: set[Path],
    warnings: list[str],
    at_most: StepKey | None = None,
) -> Resolution:
    views = [_scan_rank(root, rank, formats, warnings) for rank in scanned]
    if not any(v.candidates for v in views):
        if _has_loose_checkpoints(root, formats):
            raise ResolveError(
                f"load_checkpoint {root} holds checkpoint files but no rank_N/ folders: "
                "name the file itself, or use the rank_N/ layout"
            )
        if any(v.meta for v in views):
            warnings.append(f"{root}: meta.json present but no checkpoint files; starting from random init")
        return Resolution("none", warnings=tuple(warnings))

    # Each step needs every rank of the gang that wrote it (recorded in meta.json; gangs change
    # size with auto_trans_ckpt), and is committed when each of those ranks' meta.json reached it.
    keys = set().union(*(v.candidates for v in views))
    gangs = {k: _gang_size(dict(enumerate(views)), k, legacy) for k in keys}
    complete = {
        k
        for k in keys
        if gangs[k] <= len(views)
        and all(k in views[r].candidates for r in range(gangs[k]))
        and _one_attempt([views[r].candidates[k] for r in range(gangs[k])])
    }
    if at_most is not None:
        complete = {k for k in complete if k <= at_most}
    for rank, view in enumerate(views):
        if view.meta is not None and view.meta.key not in complete and view.meta.key in view.candidates:
            warnings.append(
                f"rank {rank}: meta.json names {view.meta.last_ckpt_file}, "
                "which is not complete on every rank; falling back"
            )

    def committed(k: StepKey) -> bool:
        return all(views[r].meta is None or k <= views[r].meta.key for r in range(gangs[k]))  # type: ignore[union-attr]

    any_meta = any(views[r].meta is not None for r in range(len(views)))
    newer = sorted((k for k in complete if committed(k)), reverse=True)
    uncommitted = sorted((k for k in complete if not committed(k)), reverse=True)
    for key in newer + uncommitted:
        chosen = [views[r].candidates[key] for r in range(gangs[key])]
        problems = [
            f"rank {rank}: {c.path.name}: {reason}"
            for rank, c in enumerate(chosen)
            if (reason := ("failed to load" if c.path in exclude else _invalid(c, check)))
        ]
        if problems:
            warnings.append(f"step {key} is damaged ({'; '.join(problems)}); falling back to an older step")
            continue
        if any_meta and not committed(key):
            warnings.append(f"no committed step is intact; using step {key}, newer than meta.json")
        records = [c.record for c in chosen if c.record is not None]
        global_step = records[0].global_step if records else None
        return Resolution(
            "directory",
            {r: c.path for r, c in enumerate(chosen)},
            key,
            global_step,
            tuple(warnings),
            gangs[key],
        )
    warnings.append(
        f"{root}: checkpoint files exist but no step is complete and intact on every rank; random init"
    )
    return Resolution("none", warnings=tuple(warnings))


def _one_attempt(chosen: list[_Candidate]) -> bool:
    """The ranks' files of a step come from one gang. Steps are rewritten after a resume, so a rank
    can still list a step from an earlier attempt that another rank has just written anew; after a
    resize the two can even hold different training states under the same step number."""
    attempts = {c.record.attempt for c in chosen if c.record is not None and c.record.attempt is not None}
    return len(attempts) <= 1


def _gang_size(views: dict[int, _RankView], key: StepKey, legacy: int) -> int:
    """How many ranks wrote step `key`: from the lowest rank whose meta.json records it, else `legacy`
    (every rank folder; older records do not say)."""
    for rank in sorted(views):
        candidate = views[rank].candidates.get(key)
        if candidate is not None and candidate.record is not None and candidate.record.world_size:
            return candidate.record.world_size
    return legacy


# ---------------------------------------------------------------------------------------------- helpers


def _ranks(root: Path, world_size: int | None) -> tuple[range, int]:
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


def _has_loose_checkpoints(root: Path, formats: Collection[str]) -> bool:
    return any((p := parse_name(n)) is not None and p.ext in formats for n in os.listdir(root))


def _scan_rank(root: Path, rank: int, formats: Collection[str], warnings: list[str]) -> _RankView:
    directory = rank_dir(root, rank)
    if not directory.is_dir():
        return _RankView({}, None)
    if not is_inside(directory, root):
        warnings.append(f"{directory} leads outside {root}; ignored")
        return _RankView({}, None)
    try:
        meta = read_meta(directory)
    except MetaError as e:
        warnings.append(f"ignoring unreadable meta.json: {e}")
        meta = None

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

    candidates: dict[StepKey, _Candidate] = {}
    for record in _records(meta, directory, formats, warnings):
        path = directory / record.file
        if path in on_disk.get(record.key, []):
            candidates[record.key] = _Candidate(path, record.key, record)
        else:
            warnings.append(f"rank {rank}: meta.json names {record.file}, which is missing")
    for key, paths in on_disk.items():
        if key not in candidates:
            newest = max(paths, key=lambda p: (_mtime(p), p.name))
            candidates[key] = _Candidate(newest, key, None)
    return _RankView(candidates, meta)


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


def _invalid(c: _Candidate, check: Check) -> str | None:
    """Why this file is unusable, or None."""
    try:
        st = c.path.stat()
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if not c.path.is_file():
        return "not a regular file"
    if check is Check.EXISTS:
        return None
    if c.record is not None:
        if st.st_size != c.record.size:
            return f"size {st.st_size} != recorded {c.record.size}"
        if check is Check.DIGEST and sha256_file(c.path) != c.record.sha256:
            return "sha256 differs from the record"
        return None
    if st.st_size == 0:
        return "empty"
    if c.path.suffix == ".safetensors":
        return _safetensors_problem(c.path, st.st_size)
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    """A truncated safetensors file is detectable from its header alone."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return "truncated header"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return "header length beyond the end of the file"
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"unreadable header ({e.__class__.__name__})"
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"data ends at byte {expected}, file has {size}"
    return None
