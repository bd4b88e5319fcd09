"""steps.jsonl: one JSON object per optimizer step, appended and flushed (not fsynced).

A crash can leave a torn last line. Readers skip lines that do not parse; a writer that finds a torn
tail starts on a fresh line. After a resume the same global step can appear twice: the later line is
the one that belongs to the surviving history.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class StepLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115  (kept open for the whole run)
        size = os.fstat(self._file.fileno()).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    self._file.write(b"\n")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")

    def close(self) -> None:
        self._file.close()


def read_steps(path: Path) -> list[dict[str, Any]]:
    """Every well-formed line, in order; torn or garbled lines are skipped."""
    out = []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    for line in data.split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("global_step"), int):
            out.append(record)
    return out


def effective_steps(records: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """global_step -> the last record written for it (the one on the surviving history)."""
    return {r["global_step"]: r for r in records}
