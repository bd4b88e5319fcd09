"""Fine-tune from pretrained weights, then auto-resume, with real MindSpore processes and the
environment the controller injects (`controller.core.podspec.trainer_env`).

The first start of the job loads the user's `load_checkpoint` (weights only); a restart resumes from
the job's own checkpoint, not from the weights again; every per-step loss is bitwise equal to the
same fine-tune run uninterrupted without the controller (plain MindFormers semantics)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.contract import ExitCode
from respawn_protocol.meta import read_meta
from respawn_protocol.resolve import last_complete
from tests.support.poll import wait_for
from tests.support.trainer import (
    PROCESS_TIMEOUT,
    TOTAL_STEPS,
    WAIT,
    WORLD,
    Launcher,
    controller_env,
    losses,
    run_to_end,
    start_gang,
    step_lines,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.slow


def train(trainer_env: dict[str, str], path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trainer_image", "--config", str(path)],
        env=trainer_env,
        capture_output=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> Path:
    """The run whose weights are the pretrained ones: the tiny run from random init, every
    checkpoint kept."""
    out = tmp_path_factory.mktemp("base")
    config = tiny_config(out, callbacks__0__keep_checkpoint_max=100)
    train(trainer_env, write_config(out.parent / f"{out.name}.yaml", config))
    return out


@pytest.fixture(scope="module")
def weights(base: Path) -> Path:
    """The base run's weights-only file of global step 10: what a user names as pretrained weights."""
    meta = read_meta(base / "checkpoint" / "rank_0")
    assert meta is not None
    (network_file,) = [r.network_file for r in meta.checkpoints if r.global_step == 10]
    assert network_file is not None
    return base / "checkpoint_network" / "rank_0" / network_file


def finetune(out: Path, weights: Path) -> dict[str, Any]:
    """The fine-tune's config: the pretrained weights, weights only, its own checkpoint prefix."""
    return tiny_config(out, load_checkpoint=str(weights), resume_training=False, callbacks__0__prefix="ft")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str], weights: Path) -> Path:
    """The fine-tune uninterrupted, without the controller: load_checkpoint as MindFormers reads it."""
    out = tmp_path_factory.mktemp("reference")
    train(trainer_env, write_config(out.parent / f"{out.name}.yaml", finetune(out, weights)))
    return out


def starts(out: Path) -> list[Any]:
    return [r["resumed_from"] for r in step_lines(out) if "resumed_from" in r]


def test_the_reference_fine_tune_starts_from_the_weights(base: Path, weights: Path, reference: Path) -> None:
    assert starts(reference) == [{"file": weights.name, "step": "1_10", "global_step": 0}]
    # The base run's first step had the same batch and dropout mask, and random weights.
    assert losses(reference)[1] != losses(base)[1]


def test_a_job_starts_from_pretrained_weights_then_resumes_from_its_own_checkpoint(
    reference: Path, weights: Path, launch: Any, tmp_path: Path
) -> None:
    out = tmp_path / "job"
    path = write_config(tmp_path / "run.yaml", finetune(out, weights))

    # Attempt 0: killed mid-training, after it has committed checkpoints of its own.
    first = launch(path, **controller_env(out, attempt=0))
    wait_for("6 steps", lambda: len(step_lines(out)) >= 6 or first.proc.poll() is not None, PROCESS_TIMEOUT)
    assert first.proc.poll() is None, first.output()[-3000:]
    first.kill()
    assert read_meta(out / "checkpoint" / "rank_0") is not None

    # Attempt 1: the same environment, the same config that still names the pretrained weights.
    final = run_to_end(launch, path, **controller_env(out, attempt=1))
    assert final.proc.returncode == ExitCode.SUCCESS, final.output()[-3000:]

    pretrained_start, resumed = starts(out)
    assert pretrained_start == {"file": weights.name, "step": "1_10", "global_step": 0}
    assert resumed["file"].startswith("ft_rank_0") and resumed["global_step"] >= 1, resumed
    after_restart = [r["global_step"] for r in step_lines(out)][-(TOTAL_STEPS - resumed["global_step"]) :]
    assert after_restart == list(range(resumed["global_step"] + 1, TOTAL_STEPS + 1))  # nothing redone
    assert losses(out) == losses(reference)  # bitwise, every step: the pretrained start and the resume


def gang_starts(out: Path) -> list[list[Any]]:
    return [
        [r["resumed_from"] for r in step_lines(out, rank) if "resumed_from" in r] for rank in range(WORLD)
    ]


def test_a_gang_agrees_on_the_pretrained_start_until_its_own_checkpoint_is_complete(
    weights: Path, trainer_env: dict[str, str], tmp_path: Path
) -> None:
    """Data parallel, 2 ranks, the controller's environment. Attempt 0: rank 1 dies inside its first
    save, rank 0 commits step 1: a step on one rank only, so attempt 1 starts from the pretrained
    weights on both ranks. Attempt 1: rank 1 dies with step 4 durable but uncommitted: attempt 2
    resumes both ranks from the job's step 3."""
    out = tmp_path / "job"
    config = tiny_config(
        out, use_parallel=True, load_checkpoint=str(weights), resume_training=False, callbacks__0__prefix="ft"
    )
    path = write_config(tmp_path / "run.yaml", config)

    def launcher(attempt: int) -> Launcher:
        return Launcher({**trainer_env, **controller_env(out, attempt=attempt, replicas=WORLD)})

    gang = start_gang(launcher(0), path, RESPAWN_FAULT="before_publish:1")
    try:
        assert gang[1].wait(WAIT) == -signal.SIGKILL, gang[1].output()[-3000:]
        wait_for("rank 0 commits step 1", lambda: read_meta(out / "checkpoint" / "rank_0"), WAIT)
    finally:
        for p in gang:
            p.kill()
    # Step 1 on rank 0 only (rank 1 left a temp file): no step complete on every rank.
    assert list((out / "checkpoint" / "rank_0").glob("ft_rank_0-1_1.ckpt"))
    assert last_complete(out / "checkpoint").random_init

    gang = start_gang(launcher(1), path, RESPAWN_FAULT="after_publish:4")
    try:
        assert gang[1].wait(WAIT) == -signal.SIGKILL, gang[1].output()[-3000:]
    finally:
        for p in gang:
            p.kill()

    gang = start_gang(launcher(2), path)
    try:
        for p in gang:
            assert p.wait(WAIT) == ExitCode.SUCCESS, p.output()[-3000:]
    finally:
        for p in gang:
            p.kill()

    pretrained = {"file": weights.name, "step": "1_10", "global_step": 0}
    for rank, (first, second, third) in enumerate(gang_starts(out)):
        assert first == second == pretrained, (rank, first, second)
        assert third["file"].startswith(f"ft_rank_{rank}") and third["step"] == "1_3", (rank, third)
        lines = step_lines(out, rank)
        by_start: list[dict[int, str]] = []
        for r in lines:
            if "resumed_from" in r:
                by_start.append({})
            by_start[-1][r["global_step"]] = r["loss_bits"]
        assert min(by_start[2]) == 4  # nothing before the resumed step is run again
        # Both pretrained starts ran step 1 alike; the resume continues attempt 1's steps bitwise.
        assert by_start[0][1] == by_start[1][1]
        assert by_start[1][4] == by_start[2][4]
