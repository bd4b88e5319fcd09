"""keep_checkpoint_max: which files go, decided only after a newer checkpoint is committed.

Unlike MindFormers, pruning also covers this job's files from earlier runs (other `_K` suffixes) and
never removes the step that is the newest complete on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from respawn_protocol.layout import in_family, parse_name
from respawn_protocol.meta import Record


def retained(
    history: list[Record], new: Record, keep_max: int, protect: Collection[str] = ()
) -> list[Record]:
    """History after committing `new`: entries at or after its step belong to an abandoned branch
    (a resume from an older step) unless protected, then the newest `keep_max` stay, plus any
    protected file."""
    beyond = [r for r in history if r.key >= new.key and r != new and r.file in protect]
    line = [r for r in history if r.key < new.key] + [new]
    newest = line[-keep_max:]
    return beyond + [r for r in line if r in newest or r.file in protect]


def doomed(directory: Path, base: str, keep: Collection[str]) -> list[Path]:
    """This job's checkpoint files in `directory` that are not to be kept."""
    if not directory.is_dir():
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        parsed = parse_name(name)
        if parsed is not None and in_family(parsed.prefix, base) and name not in keep:
            out.append(directory / name)
    return out
