"""`respawn plot`: the loss per global step of one rank across every start in its steps.jsonl, with
each failure (the last step before a start that redoes steps) and each resume (the checkpoint step a
start loaded) marked, optionally over a reference run of the same job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from respawn_cli import history
from respawn_protocol.steplog import effective_steps, read_steps


@dataclass(frozen=True)
class PlotSummary:
    starts: int
    failures: int
    steps_redone: int
    compared: int  # steps present in both runs (with a reference)
    mismatched: int  # of those, steps whose final loss differs bitwise from the reference


def plot(output_dir: Path, out: Path, *, rank: int = 0, reference: Path | None = None) -> PlotSummary:
    path = history.steps_path(output_dir, rank)
    records = read_steps(path)
    if not records:
        raise ValueError(f"no steps in {path}")
    starts = history.split_starts(records)
    resumes = history.resumes(starts)
    ref_records = read_steps(history.steps_path(reference, rank)) if reference is not None else []
    if reference is not None and not ref_records:
        raise ValueError(f"no steps in {history.steps_path(reference, rank)}")

    # The Agg canvas directly: no pyplot, no global backend state, no display needed.
    fig = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if ref_records:
        _draw_reference(ax, ref_records)
    _draw_starts(ax, starts)
    _draw_resumes(ax, starts, resumes)

    summary = _summary(starts, resumes, records, ref_records)
    ax.set_title(_title(path, summary, with_reference=bool(ref_records)), fontsize=11)
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return summary


def _draw_reference(ax: Axes, ref_records: list[dict[str, Any]]) -> None:
    ref = effective_steps(ref_records)
    xs = sorted(ref)
    ax.plot(xs, [ref[x]["loss"] for x in xs], color="0.7", linewidth=4, label="reference", zorder=1)


def _draw_starts(ax: Axes, starts: list[history.Start]) -> None:
    """One line per start, labelled with where it began."""
    colors = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
    for start in starts:
        color = colors[start.index % len(colors)]
        xs = [r["global_step"] for r in start.records]
        ys = [r["loss"] for r in start.records]
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
        if res.failed_at is not None and prev.records:
            _draw_failure(ax, res, base, prev.records[-1]["loss"], labelled=failure_labelled)
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
    records: list[dict[str, Any]],
    ref_records: list[dict[str, Any]],
) -> PlotSummary:
    compared = mismatched = 0
    if ref_records:
        ref = effective_steps(ref_records)
        mine = effective_steps(records)
        for step, record in mine.items():
            if step in ref:
                compared += 1
                a, b = record.get("loss_bits"), ref[step].get("loss_bits")
                same = a == b if a is not None and b is not None else record["loss"] == ref[step]["loss"]
                mismatched += not same
    return PlotSummary(len(starts), len(resumes), sum(r.steps_redone for r in resumes), compared, mismatched)
