"""End to end with real MindSpore processes: killed, stopped and redirected runs resume bit-exactly."""

from __future__ import annotations

import math
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.contract import ExitCode
from respawn_protocol.meta import read_meta
from tests.support import REPO
from tests.support.poll import FAST, wait_for
from tests.support.trainer import TOTAL_STEPS, losses, run_to_end, step_lines, tiny_config, tree, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> Path:
    """One uninterrupted run, every checkpoint kept."""
    out = tmp_path_factory.mktemp("reference")
    path = write_config(
        out.parent / f"{out.name}.yaml", tiny_config(out, callbacks__0__keep_checkpoint_max=100)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "trainer_image", "--config", str(path)],
        env=trainer_env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return out


def starts(out: Path) -> list[Any]:
    return [r["resumed_from"] for r in step_lines(out) if "resumed_from" in r]


def test_reference_run_starts_from_random_init_in_an_empty_directory(reference: Path) -> None:
    lines = step_lines(reference)
    assert [r["global_step"] for r in lines] == list(range(1, TOTAL_STEPS + 1))
    assert starts(reference) == [None]
    assert lines[-1]["epoch"] == 2 and lines[-1]["step"] == 10
    assert lines[-1]["loss"] < lines[0]["loss"]
    times = [r["time"] for r in lines]  # the wall clock `respawn plot --x time` reads
    assert times == sorted(times) and abs(times[-1] - time.time()) < 3600


def kill_at_random(launch: Any, path: Path, out: Path, rng: random.Random) -> None:
    """SIGKILL a run a random 0-80 ms after it has logged 1-4 more steps."""
    proc = launch(path)
    target = len(step_lines(out)) + rng.randint(1, 4)
    wait_for(
        "steps", lambda: len(step_lines(out)) >= target or proc.proc.poll() is not None, 90, interval=FAST
    )
    kill_at = time.monotonic() + rng.uniform(0.0, 0.08)
    wait_for("time.monotonic() >= kill_at", lambda: time.monotonic() >= kill_at, 1, interval=FAST)
    assert proc.proc.poll() is None, proc.output()[-2000:]
    proc.kill()


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_killed_and_restarted_run_matches_the_uninterrupted_one(
    reference: Path, launch: Any, tmp_path: Path, fmt: str, async_save: bool
) -> None:
    rng = random.Random(f"kills-{fmt}-{async_save}")
    out = tmp_path / "out"
    config = tiny_config(
        out, load_ckpt_format=fmt, callbacks__0__checkpoint_format=fmt, callbacks__0__async_save=async_save
    )
    path = write_config(tmp_path / "run.yaml", config)

    # A precise kill: the checkpoint file is durable, its meta.json update is not written yet.
    killed = run_to_end(launch, path, RESPAWN_FAULT=f"after_publish:{rng.randint(3, 6)}")
    assert killed.proc.returncode == -signal.SIGKILL, killed.output()[-2000:]

    # Two kills at random moments; with a save every step, many land inside a save.
    for _ in range(2):
        kill_at_random(launch, path, out, rng)

    final = run_to_end(launch, path)
    assert final.proc.returncode == ExitCode.SUCCESS, final.output()[-3000:]
    assert losses(out) == losses(reference)
    resumed = starts(out)
    assert resumed[0] is None and len(resumed) == 4
    assert all(r is not None for r in resumed[1:]), resumed  # a complete checkpoint existed each time


def test_sigterm_commits_the_current_step_and_loses_nothing(
    reference: Path, launch: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    path = write_config(tmp_path / "run.yaml", tiny_config(out, callbacks__0__save_checkpoint_steps=1000))
    proc = launch(path)
    wait_for("5 steps", lambda: len(step_lines(out)) >= 5 or proc.proc.poll() is not None, 90, interval=FAST)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait() == ExitCode.STOPPED, proc.output()[-2000:]
    last_logged = step_lines(out)[-1]["global_step"]
    meta = read_meta(out / "checkpoint" / "rank_0")
    assert meta is not None and meta.last_global_step == last_logged  # zero steps lost
    assert 5 <= last_logged < TOTAL_STEPS

    final = run_to_end(launch, path)
    assert final.proc.returncode == ExitCode.SUCCESS
    assert [r["global_step"] for r in step_lines(out)] == list(range(1, TOTAL_STEPS + 1))  # nothing re-run
    assert losses(out) == losses(reference)


def test_resume_from_a_named_step_through_the_python_api(
    reference: Path, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    path = write_config(tmp_path / "run.yaml", tiny_config(out))
    script = (
        "import sys; from trainer_image import Trainer, TrainingArguments\n"
        "name = 'tiny_rank_0-1_6.ckpt'\n"
        "args = TrainingArguments(resume_from_checkpoint=sys.argv[2], resume_training=name)\n"
        "outcome = Trainer(sys.argv[1], args).train()\n"
        "assert outcome.status == 'completed', outcome\n"
    )
    (tmp_path / "api.py").write_text(script)  # a file, not -c: MindSpore's compile cache reads the script
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "api.py"), str(path), str(reference / "checkpoint")],
        env=trainer_env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    lines = step_lines(out)
    assert lines[0]["resumed_from"] == {"file": "tiny_rank_0-1_6.ckpt", "step": "1_6", "global_step": 6}
    assert [r["global_step"] for r in lines] == list(range(7, TOTAL_STEPS + 1))
    ref = losses(reference)
    assert losses(out) == {g: ref[g] for g in range(7, TOTAL_STEPS + 1)}


def expected_lr(step: int) -> float:
    """The tiny config's schedule at a 0-based optimizer step: warm-up 3, cosine to 0 over 40."""
    if step < 3:
        return 0.003 * (step + 1) / 3
    return 0.003 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 3) / 37)))


def test_incremental_training_on_new_data_continues_step_and_lr(
    reference: Path, launch: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    copy = tmp_path / "previous"
    shutil.copytree(reference / "checkpoint", copy)
    config = tiny_config(
        out,
        load_checkpoint=str(copy),
        runner_config__epochs=3,
        train_dataset__data_loader={"type": "SyntheticDataset", "num_samples": 48, "content_seed": 3},
    )
    final = run_to_end(launch, write_config(tmp_path / "run.yaml", config))
    assert final.proc.returncode == ExitCode.SUCCESS, final.output()[-3000:]
    assert "incremental training from global step 20" in final.output()
    lines = step_lines(out)
    assert lines[0]["resumed_from"]["global_step"] == TOTAL_STEPS
    assert [(r["global_step"], r["epoch"], r["step"]) for r in lines] == [
        (21 + i, 3, 1 + i) for i in range(6)
    ]
    for r in step_lines(reference) + lines:
        assert r["lr"] == pytest.approx(expected_lr(r["global_step"] - 1), rel=1e-5), r


def test_bad_input_is_a_permanent_error_and_deletes_nothing(
    reference: Path, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = tree(out)
    good = tiny_config(out)
    cases: list[tuple[dict[str, Any], list[str], dict[str, str], str]] = [
        ({**good, "learning_rate": 1}, [], {}, "learning_rate: unknown key"),
        (
            {**good, "runner_config": {"batch_size": "8"}},
            [],
            {},
            "runner_config.batch_size: expected int, got str",
        ),
        (good, ["--resume_training", "../../etc/tiny_rank_0-1_1.ckpt"], {}, "bare checkpoint file name"),
        (
            good,
            [],
            {"RESPAWN_RESUME_TRAINING": "../rank_0/tiny_rank_0-1_1.ckpt"},
            "bare checkpoint file name",
        ),
        (good, ["--resume_training", "tiny_rank_0-9_9.ckpt"], {}, "tiny_rank_0-9_9.ckpt is missing"),
        (good, ["--load_checkpoint", str(tmp_path / "typo")], {}, "does not exist"),
    ]
    for i, (config, argv, env, message) in enumerate(cases):
        path = write_config(tmp_path / f"bad{i}.yaml", config)
        proc = subprocess.run(
            [sys.executable, "-m", "trainer_image", "--config", str(path), *argv],
            env={**trainer_env, **env},
            capture_output=True,
            timeout=60,
            cwd=REPO,
        )
        stderr = proc.stderr.decode()
        assert proc.returncode == ExitCode.CONFIG_ERROR, (message, stderr[-2000:])
        assert message in stderr, stderr[-2000:]
        assert "mindspore" not in stderr.lower()  # rejected before the slow imports
    assert tree(out) == before
