"""`respawn plot`: the loss per global step of one rank across every start in its steps.jsonl, with
each failure (the last step before a start that redoes steps) and each resume (the checkpoint step a
start loaded) marked, optionally over a reference run of the same job. Logs are streamed
(respawn_cli/history.py): memory grows by 24 bytes per step, not with the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from respawn_cli import history


@dataclass(frozen=True)
class PlotSummary:
    starts: int
    failures: int
    steps_redone: int
    compared: int  # steps present in both runs (with a reference)
    mismatched: int  # of those, steps whose final loss differs bitwise from the reference


def plot(output_dir: Path, out: Path, *, rank: int = 0, reference: Path | None = None) -> PlotSummary:
    path, starts, points = history.load_points(output_dir, rank)
    if not starts:
        raise ValueError(f"no steps in {path}")
    resumes = history.resumes(starts)
    ref_points = None
    if reference is not None:
        ref_path, ref_starts, ref_points = history.load_points(reference, rank)
        if not ref_starts:
            raise ValueError(f"no steps in {ref_path}")

    # The Agg canvas directly: no pyplot, no global backend state, no display needed.
    fig = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if ref_points is not None:
        _draw_reference(ax, ref_points)
    _draw_starts(ax, starts, points)
    _draw_resumes(ax, starts, resumes)

    summary = _summary(starts, resumes, points, ref_points)
    ax.set_title(_title(path, summary, with_reference=ref_points is not None), fontsize=11)
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return summary


def _effective(points: history.Points) -> tuple[np.ndarray, np.ndarray]:
    """Each global step once, ascending, with the position of the last record written for it (the
    one on the surviving history)."""
    steps = np.frombuffer(points.steps, dtype=np.int64)
    order = np.argsort(steps, kind="stable")  # equal steps keep file order: the last one is last
    ordered = steps[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = ordered[1:] != ordered[:-1]
    return ordered[last], order[last].astype(np.int32)  # positions < MAX_POINTS


def _draw_reference(ax: Axes, ref: history.Points) -> None:
    xs, last = _effective(ref)
    ys = np.frombuffer(ref.losses, dtype=np.float64)[last]
    ax.plot(xs, ys, color="0.7", linewidth=4, label="reference", zorder=1)


def _draw_starts(ax: Axes, starts: list[history.Start], points: history.Points) -> None:
    """One line per start, labelled with where it began."""
    colors = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
    all_xs = np.frombuffer(points.steps, dtype=np.int64)
    all_ys = np.frombuffer(points.losses, dtype=np.float64)
    for start in starts:
        color = colors[start.index % len(colors)]
        xs = all_xs[start.offset : start.offset + start.count]
        ys = all_ys[start.offset : start.offset + start.count]
        if not start.marked and start.index == 0:
            origin = "start 0"
        elif start.resumed_from is None:
            origin = f"start {start.index}: random init"
        else:
            origin = f"start {start.index}: from step {start.resumed_from}"
        ax.plot(
            xs,
            ys,
            color=color,
            linewidth=1.4,
            marker="." if len(xs) <= 200 else None,
            markersize=4,
            label=origin,
            zorder=3,
        )


def _draw_resumes(ax: Axes, starts: list[history.Start], resumes: list[history.Resume]) -> None:
    """Each resume: the failure before it (with the steps it redoes) and the checkpoint step loaded."""
    failure_labelled = False
    for i, res in enumerate(resumes):
        prev = starts[res.start - 1]
        base = res.from_step if res.from_step is not None else 0
        if res.failed_at is not None and prev.last_loss is not None:
            _draw_failure(ax, res, base, prev.last_loss, labelled=failure_labelled)
            failure_labelled = True
        ax.axvline(
            base,
            color="black",
            linestyle=":",
            linewidth=1.1,
            zorder=2,
            label=None if i else "resume (checkpoint step loaded)",
        )
        ax.annotate(
            f"resume @ {base}",
            xy=(base, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -12),
            textcoords="offset points",
            fontsize=8,
            rotation=0,
        )


def _draw_failure(ax: Axes, res: history.Resume, base: int, loss: float, *, labelled: bool) -> None:
    """The last step before the restart, and the span of steps the resume redoes."""
    assert res.failed_at is not None
    ax.scatter(
        [res.failed_at],
        [loss],
        marker="X",
        s=110,
        color="crimson",
        edgecolors="black",
        linewidths=0.6,
        zorder=5,
        label=None if labelled else "failure (last step before restart)",
    )
    if res.steps_redone:
        ax.axvspan(base, res.failed_at, color="crimson", alpha=0.08, zorder=0)
        ax.annotate(
            f"{res.steps_redone} redone",
            xy=(res.failed_at, loss),
            xytext=(6, 10),
            textcoords="offset points",
            fontsize=8,
            color="crimson",
        )


def _title(path: Path, summary: PlotSummary, *, with_reference: bool) -> str:
    title = (
        f"{path.parent.name if path.parent.name.startswith('rank_') else path.name}: "
        f"{summary.starts} start{'s' if summary.starts != 1 else ''}, "
        f"{summary.failures} failure{'s' if summary.failures != 1 else ''}, "
        f"{summary.steps_redone} steps redone"
    )
    if with_reference:
        title += (
            f" — matches reference bitwise on all {summary.compared} steps"
            if not summary.mismatched
            else f" — {summary.mismatched}/{summary.compared} steps differ from reference"
        )
    return title


def _summary(
    starts: list[history.Start],
    resumes: list[history.Resume],
    points: history.Points,
    ref_points: history.Points | None,
) -> PlotSummary:
    compared = mismatched = 0
    if ref_points is not None:
        mine_steps, mine_last = _effective(points)
        ref_steps, ref_last = _effective(ref_points)
        for lo in range(0, len(mine_steps), _CHUNK):  # bounded temporaries
            chunk = mine_steps[lo : lo + _CHUNK]
            at = np.minimum(np.searchsorted(ref_steps, chunk), len(ref_steps) - 1)
            hit = ref_steps[at] == chunk
            a, b = mine_last[lo : lo + _CHUNK][hit], ref_last[at[hit]]
            bits_a, bits_b = _column(points.bits, a), _column(ref_points.bits, b)
            same = np.where(
                (bits_a >= 0) & (bits_b >= 0),
                bits_a == bits_b,
                _column(points.losses, a) == _column(ref_points.losses, b),
            )
            compared += len(a)
            mismatched += int(np.count_nonzero(~same))
    return PlotSummary(len(starts), len(resumes), sum(r.steps_redone for r in resumes), compared, mismatched)


_CHUNK = 1 << 16


def _column(values: Any, at: np.ndarray) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int64 if values.typecode == "q" else np.float64)[at]
