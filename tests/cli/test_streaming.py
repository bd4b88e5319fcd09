"""The CLI on large and hostile output dirs (docs/security.md): steps.jsonl is streamed, so memory
does not grow with the file; a FIFO never blocks; no symlink below the output dir is followed."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from respawn_cli import history, plot, status
from tests.support.bounded import within
from tests.support.outputs import commit, record

T = TypeVar("T")
LOG_BYTES = 64 << 20


def big_log(output: Path) -> int:
    """A 64 MiB steps.jsonl of ~1 KiB lines (a trainer logging a long field per step) in three
    starts, each going back half a start's steps (unmarked restarts); returns the number of lines."""
    path = output / "log" / "rank_0" / "steps.jsonl"
    path.parent.mkdir(parents=True)
    template = json.dumps(record(1) | {"note": "x" * 900}).replace('"global_step": 1,', '"global_step": %d,')
    lines = LOG_BYTES // (len(template) - 1)
    per_start = lines // 3
    with open(path, "w") as f:
        for k in range(3):
            count = per_start if k < 2 else lines - 2 * per_start
            first = k * per_start // 2 + 1
            f.writelines(template % s + "\n" for s in range(first, first + count))
    assert path.stat().st_size > LOG_BYTES * 0.99
    return lines


def peak_mib(fn: Callable[[], T]) -> tuple[T, float]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_status_and_plot_stream_a_64_mib_log(tmp_path: Path) -> None:
    steps = big_log(tmp_path)
    disk, peak = peak_mib(lambda: status.inspect_output(tmp_path))
    assert disk.ranks[0].steps_logged == steps
    assert len(disk.ranks[0].resumes) == 2
    assert peak < 2, f"status held {peak:.1f} MiB for a 64 MiB log"

    def plot_data() -> plot.PlotSummary:
        _, starts, points = history.load_points(tmp_path, 0)
        return plot._summary(starts, history.resumes(starts), points, points)

    summary, peak = peak_mib(plot_data)
    assert (summary.starts, summary.mismatched) == (3, 0) and summary.compared > steps // 2
    assert peak < 16, f"plot held {peak:.1f} MiB for a 64 MiB log"


def test_status_never_blocks_on_fifos_nor_follows_links(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    commit(out, 0, [5])
    (out / "log" / "rank_0").mkdir(parents=True)
    fifos = [out / "log" / "rank_0" / "steps.jsonl", out / "checkpoint" / "rank_1" / "meta.json"]
    fifos[1].parent.mkdir()
    for fifo in fifos:
        os.mkfifo(fifo)
    commit(outside, 2, [9])
    (outside / "log" / "rank_2").mkdir(parents=True)
    (outside / "log" / "rank_2" / "steps.jsonl").write_text(json.dumps(record(9)) + "\n")
    os.symlink(outside / "checkpoint" / "rank_2", out / "checkpoint" / "rank_2")
    os.symlink(outside / "log" / "rank_2", out / "log" / "rank_2")

    disk = within(10, lambda: status.inspect_output(out), fifos=fifos)
    by_rank = {r.rank: r for r in disk.ranks}
    assert sorted(by_rank) == [0, 1], "linked rank folders are not listed"
    assert "not a regular file (a FIFO)" in (by_rank[0].problem or "")
    assert "not a regular file (a FIFO)" in (by_rank[1].problem or "")
    assert disk.complete_step is None or disk.complete_step == 5
