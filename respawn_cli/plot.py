"""`respawn plot`: the loss per global step of one rank across every start in its steps.jsonl, with
each failure (the last step before a start that redoes steps) and each resume (the checkpoint step a
start loaded) marked, optionally over a reference run of the same job. Logs are streamed
(respawn_cli/history.py): memory grows by 24 bytes per step (32 with wall-clock times), not with the
file. The format comes from the output file's suffix; ranks can be overlaid; the x axis is the global
step or each step's wall-clock `time`, which shows how long no step was logged between starts."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.dates as mdates
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from respawn_cli import history

FORMATS = ("png", "svg", "pdf")  # from the output file's suffix
_EPOCH = mdates.date2num(datetime.fromtimestamp(0, UTC))  # matplotlib's date number of Unix time 0


@dataclass(frozen=True)
class PlotSummary:
    starts: int
    failures: int
    steps_redone: int
    compared: int  # steps present in both runs (with a reference)
    mismatched: int  # of those, steps whose final loss differs bitwise from the reference
    ranks: tuple[int, ...] = (0,)  # drawn; the counts above are the first's
    downtime: float | None = (
        None  # with axis="time": seconds between one start's last step and the next's first
    )


class WriteError(OSError):
    """The plot file cannot be written."""


@dataclass(frozen=True)
class _Rank:
    rank: int
    path: Path
    starts: list[history.Start]
    points: history.Points


def plot(
    output_dir: Path,
    out: Path,
    *,
    rank: int = 0,
    ranks: Sequence[int] | None = None,
    reference: Path | None = None,
    axis: str = "step",
) -> PlotSummary:
    """Draw `rank` (or every one of `ranks`, overlaid) to `out`, in the format its suffix names;
    x is the global step or, with axis="time", the wall-clock time of each step (its `time`)."""
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"{out}: the format comes from the suffix, one of {', '.join(FORMATS)}")
    if axis == "time" and reference is not None:
        raise ValueError("a reference run has its own clock: draw it against steps, not time")
    drawn = [_load(output_dir, r, times=axis == "time") for r in (ranks or [rank])]
    first = drawn[0]
    resumes = history.resumes(first.starts)
    ref_points = None
    if reference is not None:
        ref = _load(reference, first.rank, times=False)
        ref_points = ref.points

    # The Agg canvas directly: no pyplot, no global backend state, no display needed.
    fig = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    downtime = None
    if axis == "time":
        downtime = _draw_time(ax, drawn)
    else:
        if ref_points is not None:
            _draw_reference(ax, ref_points)
        if len(drawn) == 1:
            _draw_starts(ax, first.starts, first.points)
        else:
            _draw_ranks(ax, drawn, lambda r: np.frombuffer(r.points.steps, dtype=np.int64))
        _draw_resumes(ax, first.starts, resumes)
        ax.set_xlabel("global step")

    summary = _summary(first.starts, resumes, first.points, ref_points)
    summary = replace(summary, ranks=tuple(r.rank for r in drawn), downtime=downtime)
    ax.set_title(_title(first.path, summary, with_reference=ref_points is not None), fontsize=11)
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    _save(fig, out, fmt)
    return summary


def _load(output_dir: Path, rank: int, *, times: bool) -> _Rank:
    try:
        path, starts, points = history.load_points(output_dir, rank, times=times)
    except OSError as exc:  # its filename may be a descriptor (safefs): name the log
        raise ValueError(f"{history.steps_path(output_dir, rank)}: {exc.strerror or exc}") from exc
    if not starts:
        raise ValueError(f"no steps in {path}")
    if points.times is not None and (missing := int(np.count_nonzero(np.isnan(_times(points))))):
        raise ValueError(
            f"{path}: {missing} of {len(points)} steps have no wall-clock `time`; --x time needs a "
            "trainer that writes it"
        )
    return _Rank(rank, path, starts, points)


def _save(fig: Figure, out: Path, fmt: str) -> None:
    # No creation date in SVG and PDF: the same log gives the same file.
    metadata = {"Date": None} if fmt == "svg" else {"CreationDate": None} if fmt == "pdf" else None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format=fmt, metadata=metadata)
    except OSError as exc:
        raise WriteError(f"{out}: {exc.strerror or exc}") from exc


def _times(points: history.Points) -> np.ndarray:
    assert points.times is not None
    return np.frombuffer(points.times, dtype=np.float64)


def _draw_ranks(ax: Axes, drawn: list[_Rank], xs_of: Callable[[_Rank], np.ndarray]) -> None:
    """Several ranks over each other: a color per rank, each of its starts a line of that color."""
    colors = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
    for i, r in enumerate(drawn):
        xs, ys = xs_of(r), np.frombuffer(r.points.losses, dtype=np.float64)
        for start in r.starts:
            span = slice(start.offset, start.offset + start.count)
            label = f"rank {r.rank}" if start.index == 0 else None
            ax.plot(xs[span], ys[span], color=colors[i % len(colors)], linewidth=1.2, label=label, zorder=3)


def _draw_time(ax: Axes, drawn: list[_Rank]) -> float:
    """Loss against wall-clock time: each gap between one start's last step and the next's first
    shaded and labelled with its length. Returns the first rank's gaps in seconds, summed."""
    first = drawn[0]

    def dates(r: _Rank) -> np.ndarray:
        return _EPOCH + _times(r.points) / 86400.0

    if len(drawn) == 1:
        colors = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]
        xs, ys = dates(first), np.frombuffer(first.points.losses, dtype=np.float64)
        for start in first.starts:
            span = slice(start.offset, start.offset + start.count)
            ax.plot(
                xs[span],
                ys[span],
                color=colors[start.index % len(colors)],
                linewidth=1.4,
                label=_origin(start),
                zorder=3,
            )
    else:
        _draw_ranks(ax, drawn, dates)
    seconds, total = _times(first.points), 0.0
    xs = dates(first)
    for prev, cur in itertools.pairwise(first.starts):
        end, begin = prev.offset + prev.count - 1, cur.offset
        gap = max(0.0, float(seconds[begin] - seconds[end]))
        total += gap
        ax.axvspan(
            xs[end],
            xs[begin],
            color="0.5",
            alpha=0.2,
            zorder=0,
            label=None if prev.index else "no step logged (failure to next first step)",
        )
        if prev.last_loss is not None:
            _mark_failure(ax, xs[end], prev.last_loss, first=not prev.index)
        ax.annotate(
            f"down {gap:.0f}s",
            xy=(xs[end], 0.0),  # at the foot of the span: the legend sits at the top right
            xycoords=("data", "axes fraction"),
            xytext=(3, 4),
            textcoords="offset points",
            fontsize=8,
        )
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("wall-clock time (UTC)")
    return total


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
        ax.plot(
            xs,
            ys,
            color=color,
            linewidth=1.4,
            marker="." if len(xs) <= 200 else None,
            markersize=4,
            label=_origin(start),
            zorder=3,
        )


def _origin(start: history.Start) -> str:
    if not start.marked and start.index == 0:
        return "start 0"
    if start.resumed_from is None:
        return f"start {start.index}: random init"
    return f"start {start.index}: from step {start.resumed_from}"


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
    _mark_failure(ax, res.failed_at, loss, first=not labelled)
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


def _mark_failure(ax: Any, x: float, loss: float, *, first: bool) -> None:
    """The last step before a restart, as a cross; only the first one goes in the legend."""
    ax.scatter(
        [x],
        [loss],
        marker="X",
        s=110,
        color="crimson",
        edgecolors="black",
        linewidths=0.6,
        zorder=5,
        label="failure (last step before restart)" if first else None,
    )
