"""The training step runs as two graphs (gradients, then the optimizer) so that an async snapshot's
copy overlaps the gradient computation. Both must match MindSpore's fused loss-scale step bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.trainer import tiny_config, write_config

pytestmark = pytest.mark.slow

STEPS = 12


def test_split_step_matches_the_fused_step_and_waits_for_the_snapshot_copy(
    tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    # A loss scale near float32's limit overflows, halves, regrows: both branches of the update run.
    config = tiny_config(
        tmp_path,
        runner_wrapper__scale_sense={"loss_scale_value": 2.0**126, "scale_window": 2},
        model__dropout=0.0,
    )
    path = write_config(tmp_path / "split.yaml", config)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "trainer" / "split_step_probe.py"), str(path), str(STEPS)],
        env=trainer_env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    r = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert r["split"] == r["fused"]  # loss bits, overflow, loss scale after the update, LR
    overflows = [o for _, o, _, _ in r["split"]]
    assert any(overflows) and not all(overflows)
    assert r["same_state"]
    assert r["step_waited_for_copy"]
    assert r["snapshot_is_pre_step"] and r["step_changed_state"]
