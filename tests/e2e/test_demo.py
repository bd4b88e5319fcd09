"""`make demo` end to end: the same script, in a temporary work directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_demo_reaches_its_summary(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "==> summary" in result.stdout
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["phase"] == "Succeeded" and summary["restarts"] == 1
    assert summary["last_failure"]["exitCode"] == 137
    assert 0 < summary["resumed_from_step"] < summary["final_step"]
    assert summary["steps_lost"] >= 0 and summary["time_to_recover_seconds"] is not None
    phases = summary["recovery_breakdown_seconds"]
    assert summary["kill_to_first_step_seconds"] > max(phases.values()) > 0, summary
    assert {"detect", "teardown", "podStart", "processStart", "import", "firstStep"} <= set(phases), phases
    # The suggested interval comes from the real failure and the trainer's measured save cost.
    advice = summary["checkpoint_interval_suggested"]
    assert (advice["basis"], advice["failures"]) == ("job", 1) and advice["saveSeconds"] > 0, advice
    assert advice["steps"] >= 1 and advice["seconds"] > 0, advice
