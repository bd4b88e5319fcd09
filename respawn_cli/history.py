"""A rank's training history from its steps.jsonl: one segment per process start, the resumes
(`resumed_from` on the first line of each start) and the failures between them (a start that
redoes steps the previous one had already run).

The log is streamed line by line: memory does not grow with its size but with its starts (a
summary each, at most MAX_STARTS) and, for `respawn plot`, 24 bytes per step (32 with wall-clock
times; at most MAX_POINTS)."""

from __future__ import annotations

import itertools
import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from respawn_protocol.safefs import iter_entries, real_dir
from respawn_protocol.steplog import iter_steps

# Bounds on what one log may make the CLI hold (the file itself is streamed, never held whole).
MAX_STARTS = 10_000  # process starts per log: a job restarted more often is not a log to draw
MAX_POINTS = 2_000_000  # steps kept for `respawn plot`: 24 (32) bytes each, 48 (64) MB at most


class TooLong(ValueError):
    """A log beyond MAX_STARTS or (with points) MAX_POINTS."""


class Points:
    """The steps of one log in file order, as three compact columns (not a dict per line)."""

    def __init__(self, *, times: bool = False) -> None:
        self.steps = array("q")
        self.losses = array("d")
        self.bits = array("q")  # the float32 bit pattern of the loss; -1 where the line has none
        # Wall-clock seconds of each step (`time`; NaN where the line has none): only when asked
        # for (`respawn plot --x time`), 8 more bytes a step.
        self.times = array("d") if times else None

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, record: dict[str, Any]) -> None:
        if len(self.steps) >= MAX_POINTS:
            raise TooLong(f"more than {MAX_POINTS} steps")
        self.steps.append(record["global_step"])
        loss = _number(record.get("loss"))
        self.losses.append(math.nan if loss is None else loss)
        self.bits.append(_bits(record.get("loss_bits")))
        if self.times is not None:
            when = _number(record.get("time"))
            self.times.append(math.nan if when is None else when)


@dataclass
class Start:
    """One process start of a rank: how many records it wrote and where it began and ended."""

    index: int
    marked: bool = False  # began with a `resumed_from` line (False only for a log without one)
    resumed_from: int | None = None  # global step of the checkpoint it loaded; None = random init
    resumed_file: str | None = None
    count: int = 0
    first_step: int | None = None
    last_step: int | None = None
    last_loss: float | None = None
    offset: int = 0  # its first record's position in the log's Points

    def add(self, record: dict[str, Any]) -> None:
        step = record["global_step"]
        self.count += 1
        self.first_step = step if self.first_step is None else self.first_step
        self.last_step = step
        self.last_loss = _number(record.get("loss"))


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


def split_starts(records: Iterable[dict[str, Any]], points: Points | None = None) -> list[Start]:
    """Split records at every `resumed_from` line; a global step that goes backwards without one
    (a start whose first line was torn) also begins a new start. One pass, keeping only a summary
    per start (and, with `points`, three numbers per record)."""
    starts: list[Start] = []
    for record in _in_range(records):
        new = "resumed_from" in record
        if not new and starts and starts[-1].last_step is not None:
            new = record["global_step"] <= starts[-1].last_step
        if new or not starts:
            starts.append(_begin(record, starts, len(points) if points is not None else 0))
            if len(starts) > MAX_STARTS:
                raise TooLong(f"more than {MAX_STARTS} process starts")
        starts[-1].add(record)
        if points is not None:
            points.add(record)
    return starts


def _in_range(records: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Lines whose global step fits the 64-bit columns; the rest are as garbled as a torn line."""
    return (r for r in records if -(2**63) <= r["global_step"] < 2**63)


def _begin(record: dict[str, Any], starts: list[Start], offset: int) -> Start:
    start = Start(index=len(starts), offset=offset)
    if "resumed_from" in record:
        start.marked = True
        source = record["resumed_from"]
        if isinstance(source, dict):
            start.resumed_from = _opt_int(source.get("global_step"))
            file = source.get("file")
            start.resumed_file = file if isinstance(file, str) else None
    elif starts and starts[-1].last_step is not None:
        # Unmarked restart: the checkpoint step is not known, only that it is before this step.
        start.resumed_from = record["global_step"] - 1
    return start


def resumes(starts: list[Start]) -> list[Resume]:
    out = []
    for prev, cur in itertools.pairwise(starts):
        out.append(Resume(cur.index, cur.resumed_from, cur.resumed_file, prev.last_step, cur.first_step))
    return out


def load(output_dir: Path, rank: int) -> list[Start]:
    """A rank's starts, streamed from its steps.jsonl (no link followed, never blocking)."""
    path = steps_path(output_dir, rank)
    return split_starts(iter_steps(path, root=_root(output_dir, path)))


def load_points(output_dir: Path, rank: int, *, times: bool = False) -> tuple[Path, list[Start], Points]:
    """`load`, also keeping each record's step and loss (for `respawn plot`), and with `times` its
    wall-clock time."""
    path = steps_path(output_dir, rank)
    points = Points(times=times)
    try:
        starts = split_starts(iter_steps(path, root=_root(output_dir, path)), points)
    except TooLong as e:
        raise TooLong(f"{path}: {e}") from e
    return path, starts, points


def _root(output_dir: Path, path: Path) -> Path:
    """Below which no link is followed: the directory the user named."""
    return output_dir if path.is_relative_to(output_dir) and output_dir != path else path.parent


def ranks(output_dir: Path) -> list[int]:
    """Ranks with a log or checkpoint directory under a job's output dir (real directories only,
    a bounded listing: safefs.MAX_ENTRIES)."""
    found: set[int] = set()
    for sub in ("log", "checkpoint"):
        base = output_dir / sub
        if base.is_dir() and not base.is_symlink():
            for entry in iter_entries(base):
                if real_dir(entry) and entry.name.startswith("rank_") and entry.name[5:].isdigit():
                    found.add(int(entry.name[5:]))
    return sorted(found)


def _number(value: Any) -> float | None:
    """A JSON number as a float; None for anything else, a 400-digit integer included."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return None
    return None


def _bits(value: Any) -> int:
    if isinstance(value, str) and len(value) <= 16:
        try:
            return int(value, 16) & 0x7FFF_FFFF_FFFF_FFFF
        except ValueError:
            pass
    return -1


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
