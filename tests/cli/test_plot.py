"""`respawn plot` on hand-made steps.jsonl files: a valid PNG, SVG or PDF as the suffix says, the
failures and resumes it finds, ranks overlaid, and the wall-clock axis with the downtime."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from respawn_cli import history
from respawn_cli.__main__ import main
from respawn_cli.plot import plot
from tests.support.outputs import loss_at, record, write_steps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    ihdr = data[16:29]
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(b"IHDR" + ihdr), "IHDR checksum"
    assert data.endswith(b"IEND\xaeB`\x82"), "PNG is truncated"
    width, height = struct.unpack(">II", ihdr[:8])
    return width, height


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """A reference run of 40 steps, and the same job killed twice: after step 17 (checkpoint 15) and
    after step 28 (checkpoint 25)."""
    ref, job = tmp_path / "ref", tmp_path / "job"
    write_steps(ref, 0, [(None, range(1, 41))])
    write_steps(job, 0, [(None, range(1, 18)), (15, range(16, 29)), (25, range(26, 41))])
    return ref, job


def test_history_splits_starts_and_counts_redone_steps(runs: tuple[Path, Path]) -> None:
    _ref, job = runs
    starts = history.load(job, 0)
    assert [(s.resumed_from, s.first_step, s.last_step) for s in starts] == [
        (None, 1, 17),
        (15, 16, 28),
        (25, 26, 40),
    ]
    resumes = history.resumes(starts)
    assert [(r.from_step, r.failed_at, r.steps_redone) for r in resumes] == [(15, 17, 2), (25, 28, 3)]
    assert resumes[0].from_file == "e2e_rank_0-1_15.ckpt"


def test_a_start_without_its_first_line_still_splits_on_the_step_going_back() -> None:
    records = [record(s) for s in range(1, 9)] + [record(s) for s in range(6, 12)]
    starts = history.split_starts(records)
    assert [(s.first_step, s.last_step, s.resumed_from) for s in starts] == [(1, 8, None), (6, 11, 5)]
    assert history.resumes(starts)[0].steps_redone == 3


def test_plot_over_reference_is_a_png_and_matches_bitwise(runs: tuple[Path, Path], tmp_path: Path) -> None:
    ref, job = runs
    out = tmp_path / "plots" / "loss.png"
    summary = plot(job, out, reference=ref)
    assert (summary.starts, summary.failures, summary.steps_redone) == (3, 2, 5)
    assert (summary.compared, summary.mismatched) == (40, 0)
    assert png_size(out) == (1210, 605)
    assert out.stat().st_size > 20_000, "a plot with curves, markers and a legend"


def test_plot_counts_steps_that_leave_the_reference(tmp_path: Path) -> None:
    ref, job = tmp_path / "ref", tmp_path / "job"
    write_steps(ref, 1, [(None, range(1, 21))])
    path = write_steps(job, 1, [(None, range(1, 11)), (8, range(9, 21))])
    lines = path.read_text().splitlines()
    lines[-1] = lines[-1].replace(str(loss_at(20)), str(loss_at(20) + 0.5)).replace('"loss_bits"', '"x"')
    path.write_text("\n".join(lines) + "\n")
    summary = plot(job, tmp_path / "loss.png", rank=1, reference=ref)
    assert (summary.compared, summary.mismatched) == (20, 1)


def test_cli_plot_without_reference(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ref, job = runs
    out = tmp_path / "loss.png"
    assert main(["plot", "--output-dir", str(job), "-o", str(out)]) == 0
    assert "3 starts, 2 failures, 5 steps redone" in capsys.readouterr().out
    assert png_size(out) == (1210, 605)


def test_cli_plot_of_a_missing_log_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", "--output-dir", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 7
    assert "no steps in" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("suffix", "magic"), [(".svg", b"<?xml"), (".SVG", b"<?xml"), (".pdf", b"%PDF-"), (".png", PNG_SIGNATURE)]
)
def test_the_suffix_sets_the_format(
    suffix: str, magic: bytes, runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ref, job = runs
    out = tmp_path / f"loss{suffix}"
    assert main(["plot", "--output-dir", str(job), "-o", str(out)]) == 0
    data = out.read_bytes()
    assert data.startswith(magic), data[:20]
    if suffix.lower() == ".svg":
        assert b"<svg" in data and b"<!-- start 2: from step 25 -->" in data, "the legend, as text"
        assert b"CreationDate" not in data and b"<dc:date>" not in data, "the same log, the same file"
    if suffix == ".pdf":
        assert data.rstrip().endswith(b"%%EOF") and b"CreationDate" not in data


def two_ranks(tmp_path: Path) -> Path:
    job = tmp_path / "job"
    write_steps(job, 0, [(None, range(1, 18)), (15, range(16, 30))])
    path = write_steps(job, 1, [(None, range(1, 18)), (15, range(16, 30))])
    path.write_text(path.read_text().replace('"loss": 2', '"loss": 3'))  # rank 1's own local loss
    return job


@pytest.mark.parametrize("ranks", [["--all-ranks"], ["--rank", "0", "--rank", "1"]], ids=" ".join)
def test_ranks_overlaid(ranks: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loss.svg"
    assert main(["plot", "--output-dir", str(two_ranks(tmp_path)), *ranks, "-o", str(out)]) == 0
    assert "2 starts, 1 failures, 2 steps redone (rank 0; ranks 0, 1 drawn)" in capsys.readouterr().out
    svg = out.read_text()
    assert "<!-- rank 0 -->" in svg and "<!-- rank 1 -->" in svg
    assert "<!-- start 1: from step 15 -->" not in svg, "a color per rank, not per start"


def test_a_rank_of_the_overlay_without_a_log_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = two_ranks(tmp_path)
    args = ["plot", "--output-dir", str(job), "--rank", "0", "--rank", "2", "-o", str(tmp_path / "x.png")]
    assert main(args) == 7
    assert f"no steps in {job / 'log' / 'rank_2' / 'steps.jsonl'}" in capsys.readouterr().err


def timed_log(output: Path, rank: int = 0) -> Path:
    """Steps 1..17 a second apart, killed; 42 s later the restart's first step (16, from 15) and on
    to 30; then a second failure after step 30 with 8 s to the next start (29, from 28)."""
    t0, lines = 1_767_261_600.0, []  # 2026-01-01T10:00:00Z
    for step in range(1, 18):
        lines.append(record(step, time=t0 + step) | ({"resumed_from": None} if step == 1 else {}))
    for i, step in enumerate(range(16, 31)):
        extra = {"resumed_from": {"global_step": 15}} if i == 0 else {}
        lines.append(record(step, time=t0 + 17 + 42 + i) | extra)
    last = t0 + 17 + 42 + 14
    for i, step in enumerate(range(29, 33)):
        extra = {"resumed_from": {"global_step": 28}} if i == 0 else {}
        lines.append(record(step, time=last + 8 + i) | extra)
    path = output / "log" / f"rank_{rank}" / "steps.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_wall_clock_axis_shows_the_downtime_between_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    timed_log(tmp_path / "job")
    out = tmp_path / "loss.svg"
    summary = plot(tmp_path / "job", out, axis="time")
    assert (summary.starts, summary.failures, summary.downtime) == (3, 2, 50.0)
    svg = out.read_text()
    assert "<!-- down 42s -->" in svg and "<!-- down 8s -->" in svg
    assert "<!-- wall-clock time (UTC) -->" in svg and "<!-- 10:01 -->" in svg, "clock times on the axis"
    assert (
        main(["plot", "--output-dir", str(tmp_path / "job"), "--x", "time", "-o", str(tmp_path / "l.png")])
        == 0
    )
    assert "3 starts, 2 failures, 4 steps redone, 50s down between starts" in capsys.readouterr().out


def test_wall_clock_axis_needs_times_and_no_reference(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref, job = runs
    out = str(tmp_path / "x.png")
    assert main(["plot", "--output-dir", str(job), "--x", "time", "-o", out]) == 7
    err = capsys.readouterr().err
    assert "45 of 45 steps have no wall-clock `time`; --x time needs a trainer that writes it" in err
    args = ["plot", "--output-dir", str(job), "--reference", str(ref), "--x", "time", "-o", out]
    assert main(args) == 2
    assert "--reference draws against steps" in capsys.readouterr().err
    assert not Path(out).exists()
