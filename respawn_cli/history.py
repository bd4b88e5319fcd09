"""A rank's training history from its steps.jsonl: one segment per process start, the resumes
(`resumed_from` on the first line of each start) and the failures between them (a start that
redoes steps the previous one had already run)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from respawn_protocol.steplog import read_steps


@dataclass
class Start:
    """One process start of a rank: the records it wrote, in order."""

    index: int
    records: list[dict[str, Any]] = field(default_factory=list)
    marked: bool = False  # began with a `resumed_from` line (False only for a log without one)
    resumed_from: int | None = None  # global step of the checkpoint it loaded; None = random init
    resumed_file: str | None = None

    @property
    def first_step(self) -> int | None:
        return self.records[0]["global_step"] if self.records else None

    @property
    def last_step(self) -> int | None:
        return self.records[-1]["global_step"] if self.records else None


@dataclass(frozen=True)
class Resume:
    """The boundary between two starts."""

    start: int  # index of the start that resumed
    from_step: int | None  # checkpoint step it loaded (None = random init)
    from_file: str | None
    failed_at: int | None  # last step the previous start wrote
    first_step: int | None  # first step the new start wrote

    @property
    def steps_redone(self) -> int:
        """Steps the previous start had run that this one runs again (the cost of the failure)."""
        if self.failed_at is None:
            return 0
        base = self.from_step if self.from_step is not None else 0
        return max(0, self.failed_at - base)


def steps_path(output_dir: Path, rank: int) -> Path:
    """A job's output dir, a rank's log dir, or a steps.jsonl itself."""
    if output_dir.is_file():
        return output_dir
    for candidate in (output_dir / "log" / f"rank_{rank}" / "steps.jsonl", output_dir / "steps.jsonl"):
        if candidate.exists():
            return candidate
    return output_dir / "log" / f"rank_{rank}" / "steps.jsonl"


def split_starts(records: list[dict[str, Any]]) -> list[Start]:
    """Split records at every `resumed_from` line; a global step that goes backwards without one
    (a start whose first line was torn) also begins a new start."""
    starts: list[Start] = []
    for record in records:
        new = "resumed_from" in record
        if not new and starts and starts[-1].records:
            new = record["global_step"] <= starts[-1].records[-1]["global_step"]
        if new or not starts:
            start = Start(index=len(starts))
            if "resumed_from" in record:
                start.marked = True
                source = record["resumed_from"]
                if isinstance(source, dict):
                    start.resumed_from = _opt_int(source.get("global_step"))
                    start.resumed_file = source.get("file")
            elif starts and starts[-1].records:
                # Unmarked restart: the checkpoint step is not known, only that it is before this step.
                start.resumed_from = record["global_step"] - 1
            starts.append(start)
        starts[-1].records.append(record)
    return starts


def resumes(starts: list[Start]) -> list[Resume]:
    out = []
    for prev, cur in itertools.pairwise(starts):
        out.append(Resume(cur.index, cur.resumed_from, cur.resumed_file, prev.last_step, cur.first_step))
    return out


def load(output_dir: Path, rank: int) -> list[Start]:
    return split_starts(read_steps(steps_path(output_dir, rank)))


def ranks(output_dir: Path) -> list[int]:
    """Ranks with a log or checkpoint directory under a job's output dir."""
    found: set[int] = set()
    for sub in ("log", "checkpoint"):
        base = output_dir / sub
        if base.is_dir():
            for entry in base.iterdir():
                if entry.is_dir() and entry.name.startswith("rank_") and entry.name[5:].isdigit():
                    found.add(int(entry.name[5:]))
    return sorted(found)


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
