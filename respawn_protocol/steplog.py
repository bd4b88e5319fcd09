"""steps.jsonl: one JSON object per optimizer step, appended and flushed (not fsynced).

A crash can leave a torn last line. Readers skip lines that do not parse; a writer that finds a torn
tail starts on a fresh line. After a resume the same global step can appear twice: the later line is
the one that belongs to the surviving history.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from respawn_protocol import safefs


class StepLog:
    """Appends to `path`, reached from `root` (default: its directory) through real directories
    only; the file itself must be a regular file or absent (safefs)."""

    def __init__(self, path: Path, *, root: Path | None = None) -> None:
        root = path.parent if root is None else root
        root.mkdir(parents=True, exist_ok=True)  # the root is trusted as given
        safefs.ensure_dir(root, path.parent)
        fd = safefs.open_append(path, root=root)
        self._file = os.fdopen(fd, "ab", buffering=0)  # kept open for the whole run
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            self._file.write(b"\n")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")).encode() + b"\n")

    def close(self) -> None:
        self._file.close()


def iter_steps(path: Path, *, root: Path | None = None) -> Iterator[dict[str, Any]]:
    """Every well-formed line, in order, one at a time: memory does not grow with the file. Torn,
    garbled and overlong lines (`safefs.LINE_MAX_BYTES`) are skipped; a missing file has none. The
    file is opened as `safefs.open_regular` says (no link followed, never blocking)."""
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(safefs.open_regular(path, root=root))
        except FileNotFoundError:
            return
        for line in _lines(f):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and _is_int(record.get("global_step")):
                yield record


def _lines(f: io.BufferedReader) -> Iterator[bytes]:
    limit = safefs.LINE_MAX_BYTES
    while line := f.readline(limit + 1):
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := f.readline(limit + 1)) and not rest.endswith(b"\n"):
                pass  # the remainder of an overlong line, never held whole
            continue
        yield line


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_steps(path: Path) -> list[dict[str, Any]]:
    """Every well-formed line as a list: for tests and small logs. The CLI streams (`iter_steps`)."""
    return list(iter_steps(path))


def effective_steps(records: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """global_step -> the last record written for it (the one on the surviving history)."""
    return {r["global_step"]: r for r in records}
