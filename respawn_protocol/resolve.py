"""Which checkpoint to resume from: one pure function over a checkpoint directory.

Read-only and light (no MindSpore): the controller calls it on a read-only mount whenever a meta.json
changes, with `Check.SIZE` (one stat per file); the trainer calls it with `Check.DIGEST` (sha256 of the
recorded files) right before loading.

Rules, in MindFormers' terms:
- `load_checkpoint` names a file: full weights, the same file for every rank.
- `load_checkpoint` names a directory of `rank_N/` folders:
  - `resume_training: True` (or False, which loads weights only): the newest step that is committed
    (at or before the minimum over ranks of meta.json's last step) and valid on every rank, its files
    written by one start (lineage.py: one lineage, one attempt, one run prefix where unrecorded).
    Directories respawn did not write (MindFormers' meta.json, or none): one run (`_K` prefix) at a
    time, the latest first, since MindFormers' resumed runs restart their (epoch, step) numbering.
  - `resume_training: <file name>`: that step, with the rank substituted per rank (and
    `.{load_ckpt_format}` appended to a name without extension); an error if any rank lacks it or
    holds a damaged copy.
  - Nothing there (empty, or only empty `rank_N/` folders): random initialisation.
- A damaged file or a meta.json naming a missing file makes it fall back to the next older complete step,
  with a warning. Random initialisation happens only when no complete step exists at all.
- No name from config or meta.json may lead outside the directory, and no symlink below it is
  followed (`safefs`): a linked rank folder or file is ignored, or refused if named explicitly.

This module selects; candidates.py scans the rank folders (one candidate file per step and rank),
validity.py checks a file as cheaply as `Check` says.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from respawn_protocol.candidates import (
    Candidate,
    RankView,
    gang_size,
    has_loose_checkpoints,
    one_history,
    rank_folders,
    runs_newest_first,
    scan_rank,
)
from respawn_protocol.layout import (
    EXTENSIONS,
    StepKey,
    UnsafePath,
    is_plain_name,
    parse_name,
    rank_dir,
    safe_child,
    substitute_rank,
)
from respawn_protocol.resolution import Resolution, ResolveError
from respawn_protocol.resolve_flat import with_extension, without_rank_folders
from respawn_protocol.validity import Check, invalid

__all__ = ["Check", "Resolution", "ResolveError", "last_complete", "resolve"]


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

    `world_size=None` discovers the ranks from the `rank_N/` folders (by name, from rank_0 on while
    they hold checkpoint content). `missing_ok` treats a
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
    warnings: list[str] = []
    try:
        whole = without_rank_folders(root, resume_training, world_size, formats, check, exclude, at_most)
        if whole is not None:
            return whole
        ranks, legacy = rank_folders(root, world_size, warnings)
        directory = _Directory(root, ranks, legacy, formats, check, warnings)
        if isinstance(resume_training, str):
            res = _resolve_named(directory, resume_training)
        else:
            res = _resolve_latest(directory, set(exclude), at_most)
    except ValueError as e:  # UnsafeFile (too many entries, a link named explicitly), a bad merge record
        raise ResolveError(f"load_checkpoint {root}: {e}") from e
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


@dataclass(frozen=True)
class _Directory:
    """A directory of `rank_N/` folders being resolved, and how to look at it."""

    root: Path
    ranks: range  # the rank folders to read
    legacy: int  # the gang size of steps whose records do not say
    formats: Collection[str]
    check: Check
    warnings: list[str]  # collected along the way, returned in the Resolution

    def scan(self, rank: int, run: str | None = None) -> RankView:
        return scan_rank(self.root, rank, self.formats, self.warnings, run)


def _resolve_file(path: Path, world_size: int | None, formats: Collection[str]) -> Resolution:
    ext = path.suffix.lstrip(".")
    if ext not in formats:
        raise ResolveError(f"load_checkpoint {path}: expected a {' or '.join(formats)} file")
    reason = invalid(path, None, Check.SIZE)
    if reason:
        raise ResolveError(f"load_checkpoint {path}: {reason}")
    parsed = parse_name(path.name)
    ranks = range(world_size or 1)
    return Resolution("file", {r: path for r in ranks}, parsed.key if parsed else None)


def _resolve_named(d: _Directory, name: str) -> Resolution:
    """`resume_training: <file name>`: that step on every rank of its gang, or an error. A name
    without extension gets the configured format's, as MindFormers appends `.{load_ckpt_format}`."""
    name = with_extension(name, d.formats)
    parsed = parse_name(name) if is_plain_name(name) else None
    if parsed is None:
        raise ResolveError(f"resume_training {name!r}: expected a file name like PREFIX-EPOCH_STEP.ckpt")
    if parsed.ext not in d.formats:
        raise ResolveError(f"resume_training {name!r}: load_ckpt_format expects {' or '.join(d.formats)}")
    if not d.ranks:
        raise ResolveError(f"resume_training {name!r}: {d.root} holds no rank_N directories")
    views = {r: d.scan(r) for r in d.ranks}
    gang = gang_size({r: v for r, v in views.items() if _named(v, name, r)}, parsed.key, d.legacy)
    files: dict[int, Path] = {}
    problems: list[str] = []
    global_step = None
    for rank in range(gang):
        wanted = substitute_rank(name, rank)
        try:
            path = safe_child(rank_dir(d.root, rank), wanted, within=d.root)
        except UnsafePath as e:
            raise ResolveError(f"resume_training {name!r}: {e}") from e
        if not path.is_file():
            problems.append(f"rank {rank}: {wanted} is missing")
            continue
        view = views.get(rank) or RankView({}, None)
        record = next((c.record for c in view.candidates.values() if c.path == path and c.record), None)
        reason = invalid(path, record, d.check)
        if reason:
            problems.append(f"rank {rank}: {wanted}: {reason}")
        files[rank] = path
        if record is not None:
            global_step = record.global_step
    if problems:
        raise ResolveError(f"resume_training {name!r} is not usable: " + "; ".join(problems))
    return Resolution("directory", files, parsed.key, global_step, tuple(d.warnings), gang)


def _named(view: RankView, name: str, rank: int) -> bool:
    """Whether this rank's candidate for the named step is the file the name asks for."""
    wanted = substitute_rank(name, rank)
    return any(c.path.name == wanted for c in view.candidates.values())


def _resolve_latest(d: _Directory, exclude: set[Path], at_most: StepKey | None) -> Resolution:
    """`resume_training: True`. Directories whose meta.json records are ours: `_latest_in` over all
    files, paired by lineage. Others (MindFormers' meta.json, or none): one run at a time, later
    starts first, because a resumed MindFormers run restarts its (epoch, step) numbering."""
    views = [d.scan(rank) for rank in d.ranks]
    if not any(v.candidates for v in views):
        return _nothing_found(d, views)
    metas = [v.meta for v in views if v.meta is not None]
    if metas and all(m.format_version is not None for m in metas):
        return _latest_in(d, views, exclude, at_most)
    runs = runs_newest_first(views)
    for uncommitted in (False, True):  # a committed step of any run before a step never committed
        for run in runs:
            scoped = [d.scan(rank, run) for rank in d.ranks]
            res = _latest_in(d, scoped, exclude, at_most, uncommitted=uncommitted)
            if not res.random_init:
                return res
    d.warnings.append(
        f"{d.root}: checkpoint files exist but no run has a step complete and intact on every rank; "
        "random init"
    )
    return Resolution("none", warnings=tuple(d.warnings))


def _latest_in(
    d: _Directory,
    views: list[RankView],
    exclude: set[Path],
    at_most: StepKey | None,
    *,
    uncommitted: bool | None = None,
) -> Resolution:
    """The newest committed step intact on every rank of its gang, with fallbacks (each warned):
    older steps, then uncommitted ones, then random init. `uncommitted` False / True: only the
    committed / uncommitted steps, and no warning for finding none (the caller goes on)."""
    warnings = d.warnings
    steps = _Steps.of(views, d.legacy)
    complete = {k for k in steps.complete() if at_most is None or k <= at_most}
    for rank, view in enumerate(views):
        if view.meta is not None and view.meta.key not in complete and view.meta.key in view.candidates:
            warnings.append(
                f"rank {rank}: meta.json names {view.meta.last_ckpt_file}, "
                "which is not complete on every rank; falling back"
            )
    any_meta = any(v.meta is not None for v in views)
    newer = sorted((k for k in complete if steps.committed(k)), reverse=True)
    older = sorted((k for k in complete if not steps.committed(k)), reverse=True)
    for key in {None: newer + older, False: newer, True: older}[uncommitted]:
        chosen = steps.files(key)
        if not _intact(key, chosen, d.check, exclude, warnings):
            continue
        if any_meta and not steps.committed(key):
            warnings.append(f"no committed step is intact; using step {key}, newer than meta.json")
        records = [c.record for c in chosen if c.record is not None]
        first = records[0] if records else None  # one start wrote them all (complete())
        files = {r: c.path for r, c in enumerate(chosen)}
        return Resolution(
            "directory",
            files,
            key,
            first.global_step if first else None,
            tuple(warnings),
            steps.gangs[key],
            first.attempt if first else None,
            first.lineage if first else None,
        )
    if uncommitted is not None:
        return Resolution("none")
    warnings.append(
        f"{d.root}: checkpoint files exist but no step is complete and intact on every rank; random init"
    )
    return Resolution("none", warnings=tuple(warnings))


def _nothing_found(d: _Directory, views: list[RankView]) -> Resolution:
    """No rank folder holds a checkpoint file: random init, unless the files are in the wrong place."""
    if has_loose_checkpoints(d.root, d.formats):
        raise ResolveError(
            f"load_checkpoint {d.root} holds checkpoint files next to rank_N/ folders that hold none: "
            "name the file itself, or use the rank_N/ layout"
        )
    if any(v.meta for v in views):
        d.warnings.append(f"{d.root}: meta.json present but no checkpoint files; starting from random init")
    return Resolution("none", warnings=tuple(d.warnings))


@dataclass(frozen=True)
class _Steps:
    """The steps found in the rank folders, each with the size of the gang that wrote it.

    Each step needs every rank of that gang (recorded in meta.json; gangs change size with
    auto_trans_ckpt), and is committed when each of those ranks' meta.json reached it."""

    views: list[RankView]
    gangs: dict[StepKey, int]

    @classmethod
    def of(cls, views: list[RankView], legacy: int) -> _Steps:
        keys: set[StepKey] = set().union(*(v.candidates for v in views))
        return cls(views, {k: gang_size(dict(enumerate(views)), k, legacy) for k in keys})

    def files(self, key: StepKey) -> list[Candidate]:
        """The step's file on each rank of its gang (every rank has one: the step is complete)."""
        return [self.views[r].candidates[key] for r in range(self.gangs[key])]

    def complete(self) -> set[StepKey]:
        """Steps present on every rank of their gang, written by one start (`one_history`)."""
        return {
            k
            for k, gang in self.gangs.items()
            if gang <= len(self.views)
            and all(k in self.views[r].candidates for r in range(gang))
            and one_history(self.files(k))
        }

    def committed(self, key: StepKey) -> bool:
        """Every rank of the step's gang has a meta.json at or past it, or none at all."""
        metas = [self.views[r].meta for r in range(self.gangs[key])]
        return all(meta is None or key <= meta.key for meta in metas)


def _intact(
    key: StepKey, chosen: list[Candidate], check: Check, exclude: set[Path], warnings: list[str]
) -> bool:
    """Whether every rank's file of the step is usable; if not, a warning says why."""
    problems = [
        f"rank {rank}: {c.path.name}: {reason}"
        for rank, c in enumerate(chosen)
        if (reason := ("failed to load" if c.path in exclude else invalid(c.path, c.record, check)))
    ]
    if problems:
        warnings.append(f"step {key} is damaged ({'; '.join(problems)}); falling back to an older step")
    return not problems
