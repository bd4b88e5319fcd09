"""A data-parallel gang whose ranks each have their own disk (no ReadWriteMany volume) and a
checkpoint store (a real SeaweedFS): the ranks tell the directory is not shared once they have met,
resume from the newest step complete in the store, and continue bit for bit; a store they cannot
read fails the start with pre-flight `checkpoint-store` instead of a random init.

Each rank's "disk" is its own output directory; the attempt is set as the controller sets it (the
shared-directory probe names it).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from devcluster.controlplane import free_port
from respawn_protocol import contract
from respawn_protocol.contract import ExitCode
from respawn_protocol.steplog import effective_steps
from tests.support.objectstore import ObjectStore, assert_metas_name_only_whole_objects, remote_metas
from tests.support.poll import FAST, wait_for
from tests.support.trainer import (
    WAIT,
    WORLD,
    Launcher,
    TrainerProcess,
    finish,
    rank_env,
    start_gang,
    step_lines,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.slow

NOT_SHARED = "the output directory is not shared by every rank"


def losses(disks: list[Path]) -> list[dict[int, str]]:
    return [
        {g: r["loss_bits"] for g, r in effective_steps(step_lines(disk, rank)).items()}
        for rank, disk in enumerate(disks)
    ]


def start_on_disks(launch: Launcher, disks: list[Path], attempt: int) -> list[TrainerProcess]:
    """The gang, rank r writing to `disks[r]` only."""
    port = free_port()
    return [
        launch(
            write_config(disk.with_suffix(".yaml"), tiny_config(disk, use_parallel=True)),
            log_name=f"attempt{attempt}",
            **rank_env(rank, port),
            **{contract.ATTEMPT: str(attempt)},
        )
        for rank, disk in enumerate(disks)
    ]


def test_a_gang_on_its_own_disks_resumes_from_the_store_bit_exactly(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    # The reference: one shared directory, no store, uninterrupted.
    reference = tmp_path / "reference"
    finish(
        start_gang(
            Launcher(trainer_env),
            write_config(tmp_path / "reference.yaml", tiny_config(reference, use_parallel=True)),
        ),
        ExitCode.SUCCESS,
    )

    launch = Launcher({**trainer_env, **object_store.env(store_bucket)})
    first = [tmp_path / f"first-rank{r}" for r in range(WORLD)]
    gang = start_on_disks(launch, first, attempt=0)
    try:
        wait_for("the gang to train", lambda: len(step_lines(first[1], 1)) >= 3, WAIT, interval=FAST)
        gang[1].proc.send_signal(signal.SIGTERM)  # evicted: the gang commits one step and flushes
    finally:
        finish(gang, ExitCode.STOPPED)
    assert all(NOT_SHARED in p.output() for p in gang), gang[0].output()[-3000:]
    # Each disk holds its own rank's folder only: nothing else could have told the ranks the step.
    for rank, disk in enumerate(first):
        assert sorted(p.name for p in (disk / "checkpoint").iterdir()) == [f"rank_{rank}"]
    stopped_at = step_lines(first[0], 0)[-1]["global_step"]
    metas = remote_metas(object_store.client(), store_bucket)
    assert [metas[f"job/rank_{r}"]["last_global_step"] for r in range(WORLD)] == [stopped_at] * WORLD

    # Restarted on new nodes: new empty disks.
    second = [tmp_path / f"second-rank{r}" for r in range(WORLD)]
    gang = start_on_disks(launch, second, attempt=1)
    finish(gang, ExitCode.SUCCESS)
    resumed = [step_lines(disk, rank)[0]["resumed_from"] for rank, disk in enumerate(second)]
    assert [r["global_step"] for r in resumed] == [stopped_at] * WORLD, resumed
    combined = [{**a, **b} for a, b in zip(losses(first), losses(second), strict=True)]
    assert combined == losses([reference] * WORLD)
    assert_metas_name_only_whole_objects(object_store.client(), store_bucket)

    # A start the store refuses (wrong credentials) on empty disks: no random init over the job's
    # checkpoints, but the pre-flight failure the controller retries without counting it.
    refused = Launcher({**launch.env, contract.STORE_SECRET_ACCESS_KEY: "wrong"})
    third = [tmp_path / f"third-rank{r}" for r in range(WORLD)]
    gang = start_on_disks(refused, third, attempt=2)
    finish(gang, ExitCode.PREFLIGHT_FAILED)
    for p in gang:
        assert "pre-flight check checkpoint-store failed" in p.output(), p.output()[-3000:]
        assert "access denied" in p.output()
    assert not any((disk / "log").exists() and step_lines(disk, r) for r, disk in enumerate(third))
