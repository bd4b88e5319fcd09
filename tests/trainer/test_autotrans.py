"""auto_trans_ckpt with real MindSpore processes: a gang killed mid-epoch resumes on another number of
ranks through output_dir/unified_checkpoint/, and training continues where it stopped.

Runs compare at the same global batch (2 ranks x 4 samples = 1 rank x 8), where the sharded sampler
deals the same samples to every global step. The loss is then the same quantity computed in another
order, which is why it is compared within a tolerance, not bitwise: one rank averages 8 x 32 token
losses in one reduction, two ranks average 4 x 32 each and the step's loss is the mean of the two,
and float32 addition is not associative: the results differ in the last bits (measured: 4.7e-8
relative, under one float32 ulp; the worst case for 256 reassociated terms is ~256 x 2^-24). The first
loss after the resume is allowed 1e-6 relative (~8 ulp). The gradients are averaged in another order
too, so the weights drift apart by as little from then on: the rest of the curve is allowed 1e-5
(measured: at most 5e-8 over 14 steps, several steps bitwise equal). Everything that does not involve
a reduction over the batch (the LR, the loss scale, the step counters) is compared exactly.
"""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.contract import ExitCode
from respawn_protocol.steplog import effective_steps
from tests.support.trainer import (
    WAIT,
    Launcher,
    TrainerProcess,
    start_gang,
    step_lines,
    tiny_config,
    tree,
    write_config,
)

pytestmark = pytest.mark.slow

TOTAL = 20  # 80 samples / global batch 8 = 10 steps per epoch, 2 epochs
KILLED_AT = 6  # the resumed runs start from the checkpoint of global step 6, mid-epoch
RTOL_FIRST = 1e-6  # the first loss after the resume: same weights, reassociated sums
RTOL = 1e-5  # the curve after it: the gradient averages were reassociated too


def config(out: Path, batch: int, **overrides: Any) -> dict[str, Any]:
    settings = {"use_parallel": True, "auto_trans_ckpt": True, "runner_config__batch_size": batch}
    return tiny_config(out, **{**settings, **overrides})


def single(launch: Launcher, path: Path, **env: str) -> TrainerProcess:
    return launch(path, log_name="single", RESPAWN_RANK="0", RESPAWN_WORLD_SIZE="1", **env)


def finish(procs: list[TrainerProcess]) -> None:
    try:
        for p in procs:
            assert p.wait(WAIT) == ExitCode.SUCCESS, p.output()[-3000:]
    finally:
        for p in procs:
            p.kill()


def steps(out: Path, rank: int = 0) -> dict[int, dict[str, Any]]:
    return effective_steps(step_lines(out, rank))


def global_loss(out: Path, world: int) -> dict[int, float]:
    """The loss of each global step: the mean of the ranks' shard losses (equal shard sizes)."""
    per_rank = [steps(out, r) for r in range(world)]
    common = set.intersection(*(set(s) for s in per_rank))
    return {g: sum(s[g]["loss"] for s in per_rank) / world for g in sorted(common)}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> dict[int, Path]:
    """Uninterrupted runs of the same global batch: 2 ranks x 4 and 1 rank x 8."""
    launch = Launcher(trainer_env)
    two = tmp_path_factory.mktemp("ref_two_ranks")
    one = tmp_path_factory.mktemp("ref_one_rank")
    gang = start_gang(launch, write_config(two.parent / f"{two.name}.yaml", config(two, 4)))
    solo = single(launch, write_config(one.parent / f"{one.name}.yaml", config(one, 8)))
    finish([*gang, solo])
    return {2: two, 1: one}


def test_the_global_sample_stream_does_not_depend_on_the_world_size(references: dict[int, Path]) -> None:
    # Same data, same init, same masks: step 1 is the same computation split differently.
    one, two = global_loss(references[1], 1), global_loss(references[2], 2)
    assert sorted(one) == sorted(two) == list(range(1, TOTAL + 1))
    assert math.isclose(one[1], two[1], rel_tol=RTOL_FIRST), (one[1], two[1])


def resumed(out: Path, rank: int) -> list[Any]:
    return [r["resumed_from"] for r in step_lines(out, rank) if "resumed_from" in r]


def check_continuation(
    out: Path, references: dict[int, Path], *, world_before: int, world_after: int
) -> None:
    """`out` ran on `world_before` ranks to KILLED_AT, then on `world_after` ranks to the end; its
    first loss after the resume is compared with the uninterrupted run on `world_before` ranks (the
    same weights), and the rest of its curve with the one on `world_after` ranks."""
    original = references[world_before]
    ref = steps(references[world_after])
    after = [steps(out, r) for r in range(world_after)]
    for rank in range(world_after):
        origin = resumed(out, rank)[-1]
        assert origin["global_step"] == KILLED_AT and origin["world_size"] == world_before, origin
        first = min(g for g, r in after[rank].items() if r.get("resumed_from"))
        assert first == KILLED_AT + 1
        assert [g for g in sorted(after[rank]) if g > KILLED_AT] == list(range(KILLED_AT + 1, TOTAL + 1))
        # Not reductions over the batch: exact.
        for g in range(KILLED_AT + 1, KILLED_AT + 3):
            assert after[rank][g]["lr"] == ref[g]["lr"], (rank, g)
            assert after[rank][g]["loss_scale"] == ref[g]["loss_scale"], (rank, g)
    loss = global_loss(out, world_after)
    expected = global_loss(original, world_before)
    g = KILLED_AT + 1
    assert math.isclose(loss[g], expected[g], rel_tol=RTOL_FIRST), (loss[g], expected[g])
    for g in range(KILLED_AT + 1, TOTAL + 1):
        assert math.isclose(loss[g], expected[g], rel_tol=RTOL), (g, loss[g], expected[g])
    meta = json.loads((out / "unified_checkpoint" / "meta.json").read_text())
    assert (meta["step"], meta["source_world_size"]) == (KILLED_AT, world_before)
    assert (out / "unified_checkpoint" / meta["file"]).stat().st_size == meta["size"]


@pytest.mark.parametrize("remove_redundancy", [False, True], ids=["replicated", "remove_redundancy"])
def test_two_ranks_resume_on_one(
    references: dict[int, Path], tmp_path: Path, trainer_env: dict[str, str], remove_redundancy: bool
) -> None:
    """With remove_redundancy each rank's file holds half the state: the merge needs both, per the
    strategy files."""
    out = tmp_path / "out"
    launch = Launcher(trainer_env)
    two = config(out, 4, remove_redundancy=remove_redundancy)
    gang = start_gang(
        launch, write_config(tmp_path / "two.yaml", two), RESPAWN_FAULT=f"after_meta:{KILLED_AT}"
    )
    try:
        assert gang[1].wait(WAIT) == -signal.SIGKILL, gang[1].output()[-3000:]
    finally:
        for p in gang:
            p.kill()  # the gang restart
    before = tree(out / "checkpoint")

    # Without auto_trans_ckpt a world-size change is a permanent config error that touches nothing.
    plain = write_config(tmp_path / "plain.yaml", config(out, 8, auto_trans_ckpt=False))
    p = single(launch, plain)
    assert p.wait(WAIT) == ExitCode.CONFIG_ERROR, p.output()[-3000:]
    assert "auto_trans_ckpt" in p.output()
    assert tree(out / "checkpoint") == before and not (out / "unified_checkpoint").exists()

    finish([single(launch, write_config(tmp_path / "one.yaml", config(out, 8)))])
    # The old gang's rank_1 stays (its meta.json still names step 6) and does not block the new gang.
    assert (out / "checkpoint" / "rank_1" / "meta.json").is_file()
    check_continuation(out, references, world_before=2, world_after=1)


def test_one_rank_resumes_on_two(
    references: dict[int, Path], tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    launch = Launcher(trainer_env)
    solo = single(
        launch, write_config(tmp_path / "one.yaml", config(out, 8)), RESPAWN_FAULT=f"after_meta:{KILLED_AT}"
    )
    assert solo.wait(WAIT) == -signal.SIGKILL, solo.output()[-3000:]
    finish(start_gang(launch, write_config(tmp_path / "two.yaml", config(out, 4))))
    check_continuation(out, references, world_before=1, world_after=2)


def test_ranks_get_interleaved_shares_of_the_one_rank_stream(tmp_path: Path) -> None:
    from trainer_image.config import parse_config
    from trainer_image.training.data import build_stream

    def first_batches(world: int, batch: int, rank: int) -> Any:
        c = parse_config(config(tmp_path, batch))
        return list(build_stream(c, rank=rank, world_size=world).batches(start_step=7, epochs=2))[:4]

    one = first_batches(1, 8, 0)
    shares = [first_batches(2, 4, rank) for rank in (0, 1)]
    for t, batch in enumerate(one):  # global step 8.. of the 1-rank run: rank r has rows r, r + 2, ...
        assert (batch[0::2] == shares[0][t]).all() and (batch[1::2] == shares[1][t]).all()
