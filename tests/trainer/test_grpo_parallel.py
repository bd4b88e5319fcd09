"""GRPO data parallel on 2 real ranks (MindSpore's dynamic cluster on CPU): gradients all-reduced,
so the ranks end with the same policy from different prompts; a rank killed inside a save makes
the gang resume from the same older step, every rank's steps bitwise those of the uninterrupted
gang; the HCCL timeouts of the environment reach both ranks."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from devcluster.controlplane import free_port
from respawn_protocol.contract import ExitCode
from tests.support.grpo import exact, grpo_config, grpo_process, starts
from tests.support.trainer import TrainerProcess, rank_env, write_config

pytestmark = pytest.mark.slow

WORLD = 2
WAIT = 900.0  # MindSpore's init alone took ~2 min on a loaded 2-core machine
HCCL = {"HCCL_CONNECT_TIMEOUT": "2400", "HCCL_EXEC_TIMEOUT": "7200"}


def start_gang(env: dict[str, str], config: Path, tag: str, **rank1: str) -> list[TrainerProcess]:
    port = free_port()
    return [
        grpo_process(
            config,
            env,
            config.with_name(f"{config.stem}-{tag}-rank{rank}.log"),
            [],
            {**rank_env(rank, port, WORLD), **HCCL, **(rank1 if rank == 1 else {})},
        )
        for rank in range(WORLD)
    ]


def run_gang(env: dict[str, str], config: Path, tag: str) -> list[TrainerProcess]:
    gang = start_gang(env, config, tag)
    try:
        for p in gang:
            assert p.wait(WAIT) == ExitCode.SUCCESS, p.output()[-3000:]
    finally:
        for p in gang:
            p.kill()
    return gang


def parallel(out: Path, **overrides: Any) -> dict[str, Any]:
    return grpo_config(out, use_parallel=True, resume_training=True, grpo__total_steps=8, **overrides)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> tuple[Path, Path]:
    """An uninterrupted gang and, started with it, a gang whose rank 1 is SIGKILLed with step 4's
    files durable but not committed in its meta.json, then restarted (the controller's gang restart
    kills rank 0 too). The two first gangs overlap: MindSpore's rendezvous is mostly waiting."""
    outs = [tmp_path_factory.mktemp(name) for name in ("grpo_parallel_reference", "grpo_parallel_killed")]
    configs = [write_config(out.parent / f"{out.name}.yaml", parallel(out)) for out in outs]
    reference = start_gang(trainer_env, configs[0], "ref")
    killed = start_gang(trainer_env, configs[1], "killed", RESPAWN_FAULT="after_publish:4")
    try:
        assert killed[1].wait(WAIT) == -signal.SIGKILL, killed[1].output()[-3000:]
        killed[0].kill()
        for p in reference:
            assert p.wait(WAIT) == ExitCode.SUCCESS, p.output()[-3000:]
            for name, value in HCCL.items():
                assert f"{name}={value}" in p.output()
    finally:
        for p in reference + killed:
            p.kill()
    run_gang(trainer_env, configs[1], "restarted")
    return outs[0], outs[1]


def test_the_ranks_sample_different_prompts_and_end_with_the_same_policy(runs: tuple[Path, Path]) -> None:
    import mindspore as ms

    reference = runs[0]
    outcome = [exact(reference, rank) for rank in range(WORLD)]
    assert sorted(outcome[0]) == sorted(outcome[1]) == list(range(1, 9))
    assert outcome[0][1] != outcome[1][1], "each rank scores its own prompts"
    files = [sorted((reference / "checkpoint" / f"rank_{r}").glob("*-1_8.ckpt")) for r in range(WORLD)]
    weights = [ms.load_checkpoint(str(f[0])) for f in files]
    names = {k for k in weights[0] if not k.startswith("respawn.")}
    assert names and all((weights[0][k].asnumpy() == weights[1][k].asnumpy()).all() for k in names)


def test_a_rank_killed_inside_a_save_makes_the_gang_resume_exactly(runs: tuple[Path, Path]) -> None:
    reference, out = runs
    for rank in range(WORLD):
        resumed = starts(out, rank)
        assert resumed[0] is None and resumed[1]["global_step"] == 3, (rank, resumed)
        assert exact(out, rank) == exact(reference, rank)
