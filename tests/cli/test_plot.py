"""`respawn plot` on hand-made steps.jsonl files: a valid PNG, and the failures and resumes it finds."""

from __future__ import annotations

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
    assert main(["plot", "--output-dir", str(tmp_path), "-o", str(tmp_path / "x.png")]) == 1
    assert "no steps in" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
