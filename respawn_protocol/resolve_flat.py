"""Resolving directories without `rank_N/` folders (respawn_protocol/flat.py lists and reads them):
a merged checkpoint, MindSpore's merged safetensors, a flat folder of one rank's checkpoints."""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from respawn_protocol.candidates import has_loose_checkpoints
from respawn_protocol.flat import Unified, loose_files, read_unified, sharded_parts
from respawn_protocol.layout import EXTENSIONS, StepKey, is_plain_name, parse_name, rank_dir, safe_child
from respawn_protocol.resolution import Resolution, ResolveError
from respawn_protocol.validity import Check, invalid


def without_rank_folders(
    root: Path,
    resume_training: bool | str,
    world_size: int | None,
    formats: Collection[str],
    check: Check,
    exclude: Collection[Path],
    at_most: StepKey | None,
) -> Resolution | None:
    """The resolution of a directory of one of these kinds; None for the rank_N/ layout."""
    unified = read_unified(root)
    if unified is not None:
        return _unified(root, unified, resume_training, world_size, formats, check, exclude)
    parts = sharded_parts(root)
    if parts is not None:
        return _sharded(root, parts, resume_training, world_size, formats, exclude)
    # One lookup, no listing, in the rank_N/ layout: the resolver's cost there stays what it was.
    if not os.path.lexists(rank_dir(root, 0)) and has_loose_checkpoints(root, formats):
        return _flat(root, resume_training, world_size, formats, check, exclude, at_most)
    return None


def with_extension(name: str, formats: Collection[str]) -> str:
    """MindFormers appends `.{load_ckpt_format}` to a `resume_training` name without one."""
    if is_plain_name(name) and not name.endswith(tuple(f".{ext}" for ext in EXTENSIONS)):
        return f"{name}.{next(iter(formats))}"
    return name


def _unified(
    root: Path,
    unified: Unified,
    resume_training: bool | str,
    world_size: int | None,
    formats: Collection[str],
    check: Check,
    exclude: Collection[Path],
) -> Resolution:
    """A merged checkpoint (`unified_checkpoint/`): its one full file, for every rank. No fallback:
    it is a copy of one step, and the shards it was merged from are the record."""
    where = f"load_checkpoint {root} (a merged checkpoint of step {unified.key})"
    if isinstance(resume_training, str) and with_extension(resume_training, formats) != unified.file:
        raise ResolveError(f"{where}: resume_training {resume_training!r} is not its file {unified.file}")
    parsed = parse_name(unified.file) if is_plain_name(unified.file) else None
    if parsed is None or parsed.key != unified.key:
        raise ResolveError(f"{where}: meta.json names {unified.file!r}, not a checkpoint of that step")
    if parsed.ext not in formats:
        raise ResolveError(f"{where}: its file is {parsed.ext}; set load_ckpt_format: {parsed.ext}")
    path = safe_child(root, unified.file, within=root)
    reason = "failed to load" if path in exclude else invalid(path, unified.record(), check)
    if reason:
        raise ResolveError(f"{where}: {unified.file}: {reason}; merge it again from its shards")
    return Resolution("file", {r: path for r in range(world_size or 1)}, unified.key)


def _sharded(
    root: Path,
    parts: list[Path],
    resume_training: bool | str,
    world_size: int | None,
    formats: Collection[str],
    exclude: Collection[Path],
) -> Resolution:
    """MindSpore's merged safetensors (`param_name_map.json` and its parts): the directory is the
    one full checkpoint, for every rank; its parts must all be there and intact."""
    where = f"load_checkpoint {root} (MindSpore's merged safetensors)"
    if "safetensors" not in formats:
        raise ResolveError(f"{where}: set load_ckpt_format: safetensors")
    if isinstance(resume_training, str):
        raise ResolveError(f"{where}: holds one checkpoint; resume_training must be True or False")
    if root in exclude:
        raise ResolveError(f"{where}: failed to load")
    problems = [f"{p.name}: {reason}" for p in parts if (reason := invalid(p, None, Check.SIZE))]
    if problems:
        raise ResolveError(f"{where} is not usable: " + "; ".join(problems))
    return Resolution("file", {r: root for r in range(world_size or 1)})


def _flat(
    root: Path,
    resume_training: bool | str,
    world_size: int | None,
    formats: Collection[str],
    check: Check,
    exclude: Collection[Path],
    at_most: StepKey | None,
) -> Resolution:
    """A flat folder of one rank's checkpoints (ModelArts' `train_url`): its newest intact file by
    (epoch, step), or the one `resume_training` names; one rank only, with a warning."""
    if world_size not in (None, 1):
        raise ResolveError(
            f"load_checkpoint {root} holds checkpoint files but no rank_N/ folders: a flat folder is "
            f"one rank's checkpoints and cannot resume {world_size} ranks; use the rank_N/ layout, "
            "or name one file (full weights for every rank)"
        )
    warnings: list[str] = []
    files = loose_files(root, formats, warnings)
    if isinstance(resume_training, str):
        name = with_extension(resume_training, formats)
        files = [(key, path) for key, path in files if path.name == name]
        if not files:
            raise ResolveError(f"resume_training {resume_training!r}: no such checkpoint in {root}")
    for key, path in files:
        if at_most is not None and key > at_most:
            continue
        reason = "failed to load" if path in exclude else invalid(path, None, check)
        if reason:
            if isinstance(resume_training, str):
                raise ResolveError(f"resume_training {resume_training!r} is not usable: {reason}")
            warnings.append(f"{path.name} is damaged ({reason}); falling back to an older checkpoint")
            continue
        warnings.append(
            f"load_checkpoint {root} has no rank_N/ folders: a flat folder (as ModelArts' train_url), "
            f"resumed as one rank from its newest checkpoint by (epoch, step), {path.name}"
        )
        return Resolution("directory", {0: path}, key, None, tuple(warnings), 1)
    warnings.append(f"{root}: no intact checkpoint in the flat folder; random init")
    return Resolution("none", warnings=tuple(warnings))
