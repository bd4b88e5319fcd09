"""The trainer never writes, prunes or reads through a symlink in its output directory
(docs/security.md, "The trainer"): a linked `rank_N/`, checkpoint, log or strategy folder, or a
linked steps.jsonl, is a permanent configuration error (exit 78) found before anything is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from respawn_protocol.contract import ExitCode
from tests.support import REPO
from tests.support.trainer import tiny_config, tree, write_config
from trainer_image.checkpoint.checkpointer import Checkpointer
from trainer_image.checkpoint.progress import Progress
from trainer_image.config import CheckpointFormat, CheckpointMonitor, ConfigError


class BytesBackend:
    """Writes a few bytes per checkpoint: the commit protocol without MindSpore."""

    def save(
        self, path: Path, fmt: CheckpointFormat, progress: Progress, *, network_only: bool = False
    ) -> None:
        path.write_bytes(b"%d" % progress.global_step * 32)


def checkpointer(out: Path, *, keep: int = 2) -> Checkpointer:
    return Checkpointer(
        backend=BytesBackend(),  # type: ignore[arg-type]
        monitor=CheckpointMonitor(prefix="job", keep_checkpoint_max=keep),
        output_dir=out,
        rank=0,
        world_size=1,
        resumed_key=None,
    )


def at(gs: int) -> Progress:
    return Progress(epoch=1, step=gs, global_step=gs)


def outside_with_victims(tmp_path: Path) -> Path:
    """A directory outside the job holding what a trainer writing there would prune or clear."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "job_rank_0-1_1.ckpt").write_bytes(b"precious")
    (outside / ".tmp-1-deadbeef-job_rank_0-1_2.ckpt").write_bytes(b"a crashed writer's temp")
    (outside / "meta.json").write_text("{}")
    return outside


@pytest.mark.parametrize("linked", ["checkpoint/rank_0", "checkpoint", "checkpoint_network/rank_0"])
def test_checkpointer_refuses_a_folder_linked_outside(tmp_path: Path, linked: str) -> None:
    out = tmp_path / "out"
    outside = outside_with_victims(tmp_path)
    (out / linked).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, out / linked)
    before = tree(outside)
    with pytest.raises(ConfigError, match="is a symlink"):
        ckpt = checkpointer(out, keep=1)
        for gs in (1, 2, 3):
            ckpt.save(at(gs))
    assert tree(outside) == before, "nothing written, pruned or cleared outside"


def test_checkpointer_refuses_a_link_that_stays_inside(tmp_path: Path) -> None:
    """Links are never followed, wherever they lead: one rule, no path resolution to get wrong."""
    out = tmp_path / "out"
    (out / "elsewhere").mkdir(parents=True)
    (out / "checkpoint").mkdir()
    os.symlink(out / "elsewhere", out / "checkpoint" / "rank_0")
    with pytest.raises(ConfigError, match="is a symlink"):
        checkpointer(out)
    assert not os.listdir(out / "elsewhere")


@pytest.mark.parametrize(
    "linked",
    ["checkpoint/rank_0", "checkpoint", "log", "log/rank_0", "log/rank_0/steps.jsonl", "strategy"],
)
def test_trainer_exits_78_on_a_linked_folder_and_touches_nothing(
    tmp_path: Path, trainer_env: dict[str, str], linked: str
) -> None:
    out = tmp_path / "out"
    outside = outside_with_victims(tmp_path)
    (outside / "steps.jsonl").write_text('{"global_step": 1}\n')
    (out / linked).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside / "steps.jsonl" if linked.endswith(".jsonl") else outside, out / linked)
    before, before_out = tree(outside), tree(out)
    config = write_config(tmp_path / "run.yaml", tiny_config(out, runner_config__epochs=1))
    proc = subprocess.run(
        [sys.executable, "-m", "trainer_image", "--config", str(config)],
        env=trainer_env,
        capture_output=True,
        timeout=300,
        cwd=REPO,
    )
    stderr = proc.stderr.decode()
    assert proc.returncode == ExitCode.CONFIG_ERROR, stderr[-3000:]
    assert "is a symlink" in stderr and "refusing to write or prune" in stderr, stderr[-3000:]
    assert "mindspore" not in stderr.lower()  # refused before the slow imports
    assert tree(outside) == before and tree(out) == before_out
