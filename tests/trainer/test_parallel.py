"""Real data parallel across processes (MindSpore dynamic cluster on CPU): gradients are all-reduced,
and a rank killed inside a save makes the whole gang resume from the same older step, bit-exactly."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.contract import ExitCode
from respawn_protocol.steplog import effective_steps
from tests.support.poll import FAST, wait_for
from tests.support.trainer import WAIT, WORLD, Launcher, start_gang, step_lines, tiny_config, write_config

pytestmark = pytest.mark.slow

STEPS = 10  # 80 samples / 2 ranks / batch 8 = 5 steps per epoch, 2 epochs


def parallel_config(out: Path, **overrides: Any) -> dict[str, Any]:
    return tiny_config(out, use_parallel=True, **overrides)


def rank_losses(out: Path) -> list[dict[int, str]]:
    return [
        {g: r["loss_bits"] for g, r in effective_steps(step_lines(out, rank)).items()}
        for rank in range(WORLD)
    ]


def network_params(out: Path, rank: int) -> dict[str, Any]:
    import mindspore as ms

    (path,) = sorted((out / "checkpoint_network" / f"rank_{rank}").glob("*-2_5.ckpt"))
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> Path:
    """One uninterrupted 2-rank data-parallel run."""
    out = tmp_path_factory.mktemp("parallel_reference")
    path = write_config(out.parent / f"{out.name}.yaml", parallel_config(out))
    for p in start_gang(Launcher(trainer_env), path):
        assert p.wait(WAIT) == ExitCode.SUCCESS, p.output()[-3000:]
    return out


def test_ranks_all_reduce_gradients(reference: Path) -> None:
    for rank in range(WORLD):
        assert [r["global_step"] for r in step_lines(reference, rank)] == list(range(1, STEPS + 1))
    # Different data shards, so different losses; identical weights, because the gradients were averaged.
    first = rank_losses(reference)
    assert first[0][1] != first[1][1]
    a, b = network_params(reference, 0), network_params(reference, 1)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)


@pytest.mark.parametrize("remove_redundancy", [False, True], ids=["replicated", "remove_redundancy"])
def test_a_rank_killed_inside_a_save_makes_the_gang_resume_from_the_same_older_step(
    reference: Path, tmp_path: Path, trainer_env: dict[str, str], remove_redundancy: bool
) -> None:
    out = tmp_path / "out"
    path = write_config(tmp_path / "run.yaml", parallel_config(out, remove_redundancy=remove_redundancy))
    launch = Launcher(trainer_env)
    gang = start_gang(launch, path, RESPAWN_FAULT="after_publish:4")
    try:
        # Rank 1 dies with step 4's file durable but not committed in its meta.json.
        assert gang[1].wait(WAIT) == -signal.SIGKILL, gang[1].output()[-3000:]
    finally:
        for p in gang:
            p.kill()  # the controller's gang restart: rank 0 is blocked in a collective or done saving
    restarted = start_gang(launch, path)
    try:
        for p in restarted:
            assert p.wait(WAIT) == ExitCode.SUCCESS, p.output()[-3000:]
    finally:
        for p in restarted:
            p.kill()
    resumed = [
        [r["resumed_from"] for r in step_lines(out, rank) if "resumed_from" in r] for rank in range(WORLD)
    ]
    assert [r[0] for r in resumed] == [None, None]
    assert [r[1]["global_step"] for r in resumed] == [3, 3], resumed
    assert [r[1]["step"] for r in resumed] == ["1_3", "1_3"]
    assert rank_losses(out) == rank_losses(reference)
    if remove_redundancy:
        replicated = [checkpoint_bytes(reference, rank) for rank in range(WORLD)]
        split = [checkpoint_bytes(out, rank) for rank in range(WORLD)]
        assert replicated[0] == replicated[1]
        assert all(n < 0.6 * replicated[0] for n in split), (split, replicated)
        assert sum(split) < 1.1 * replicated[0], (split, replicated)
        strategies = [
            json.loads((out / "strategy" / f"ckpt_strategy_rank_{rank}.json").read_text())
            for rank in range(WORLD)
        ]
        names = [set(s["saved_parameters"]) for s in strategies]
        assert not names[0] & names[1] and names[0] and names[1]  # every parameter saved exactly once


def test_a_survivor_of_a_lost_peer_stops_on_sigterm_without_waiting_for_the_heartbeat_timeout(
    tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    """The controller's gang restart deletes the survivors while they are blocked in a collective
    whose peer is gone. MindSpore would fail the step only after its ~30 s heartbeat timeout (exit 1);
    the stop watcher ends the process with TERMINATED once the step overruns its limit, and writes
    nothing (checkpoints here are saved only at the end, so a stop that saved would leave a meta.json)."""
    out = tmp_path / "out"
    config = parallel_config(out, runner_config__epochs=100, callbacks__0__save_checkpoint_steps=10_000)
    path = write_config(tmp_path / "run.yaml", config)
    gang = start_gang(Launcher(trainer_env), path)
    try:
        wait_for("rank 0 to train", lambda: len(step_lines(out, 0)) >= 3, WAIT, interval=FAST)
        gang[1].kill()
        gang[0].proc.send_signal(signal.SIGTERM)
        assert gang[0].wait(WAIT) == ExitCode.TERMINATED, gang[0].output()[-3000:]
    finally:
        for p in gang:
            p.kill()
    assert "did not finish within" in gang[0].output()
    assert not (out / "checkpoint" / "rank_0" / "meta.json").exists()


def test_a_sigterm_to_one_rank_stops_the_gang_after_the_same_step_and_both_commit_it(
    tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    """An eviction signals one rank only: the ranks exchange their stop flags after every step, so
    both commit the same last step and exit STOPPED, rank 0 because its peer asked; nothing is lost."""
    from respawn_protocol.meta import read_meta

    out = tmp_path / "out"
    config = parallel_config(out, runner_config__epochs=100, callbacks__0__save_checkpoint_steps=10_000)
    path = write_config(tmp_path / "run.yaml", config)
    gang = start_gang(Launcher(trainer_env), path)
    try:
        wait_for("the gang to train", lambda: len(step_lines(out, 1)) >= 3, WAIT, interval=FAST)
        gang[1].proc.send_signal(signal.SIGTERM)
        for p in gang:
            assert p.wait(WAIT) == ExitCode.STOPPED, p.output()[-3000:]
    finally:
        for p in gang:
            p.kill()
    assert "a peer of the gang is stopping" in gang[0].output()
    last = [step_lines(out, rank)[-1]["global_step"] for rank in range(WORLD)]
    metas = [read_meta(out / "checkpoint" / f"rank_{rank}") for rank in range(WORLD)]
    assert [m.last_global_step if m else None for m in metas] == last
    assert last[0] == last[1] >= 3


def checkpoint_bytes(out: Path, rank: int) -> int:
    """Size of the rank's file of the final step."""
    (path,) = (out / "checkpoint" / f"rank_{rank}").glob("*-2_5.ckpt")
    return path.stat().st_size
