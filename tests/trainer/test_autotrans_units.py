"""auto_trans_ckpt without MindSpore: which step a resized gang resumes from, the merge of its shards
into unified_checkpoint/ (crash safety, reuse, strategy files), and MindFormers' rescale."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.layout import StepKey
from respawn_protocol.meta import Meta, Record, meta_path, read_meta
from respawn_protocol.resolve import ResolveError, last_complete, resolve
from trainer_image.checkpoint.merge import (
    UNIFIED_DIR,
    MergeError,
    read_unified_meta,
    strategy_body,
    strategy_path,
    unify,
)
from trainer_image.checkpoint.progress import Progress
from trainer_image.checkpoint.rescale import rescale_progress, rescale_steps
from trainer_image.training.parallel import scheduler_ip

# ------------------------------------------------------------------------------------------- resolver


class Gang:
    """Commits checkpoints into rank_N/ as a gang of `world` ranks would (meta.json records the gang)."""

    def __init__(self, root: Path, world: int, suffix: str = "", attempt: int | None = None) -> None:
        self.root, self.world, self.suffix, self.attempt = root, world, suffix, attempt

    def commit(self, step: int, *, ranks: list[int] | None = None) -> None:
        for r in range(self.world) if ranks is None else ranks:
            d = self.root / f"rank_{r}"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"job_rank_{r}{self.suffix}-1_{step}.ckpt"
            path.write_bytes(bytes([r, step]) * 40)
            data = path.read_bytes()
            old = read_meta(d)
            history = [h for h in (old.checkpoints if old else []) if h.step < step]
            record = Record(
                path.name,
                1,
                step,
                step,
                len(data),
                hashlib.sha256(data).hexdigest(),
                None,
                self.world,
                self.attempt,
            )
            meta = Meta(1, step, path.name, step, [*history, record])
            meta_path(d).write_bytes(meta.to_json())


def test_a_step_needs_only_the_ranks_of_the_gang_that_wrote_it(tmp_path: Path) -> None:
    Gang(tmp_path, 2).commit(1)
    Gang(tmp_path, 2).commit(2)
    # Resized to one rank from step 2; rank_1/ of the 2-rank era stays behind.
    Gang(tmp_path, 1, "_1").commit(3)
    Gang(tmp_path, 1, "_1").commit(4)
    res = resolve(tmp_path, True, world_size=1)
    assert (res.key, res.world_size, sorted(res.files)) == (StepKey(1, 4), 1, [0])
    assert last_complete(tmp_path).key == StepKey(1, 4)  # the controller's view agrees
    # Grown back to two ranks: that is a resize again.
    with pytest.raises(ResolveError, match="written by 1 ranks but the world size is 2"):
        resolve(tmp_path, True, world_size=2)
    assert resolve(tmp_path, True, world_size=2, resize=True).world_size == 1


def test_a_step_pairs_only_files_of_one_attempt(tmp_path: Path) -> None:
    """2 -> 1 -> 2 ranks: the first 2-rank gang's rank_1/ still lists step 21 when the second 2-rank
    gang's rank 0 commits its own step 21, a different training state (the 1-rank era took other
    optimizer steps). Pairing them would resume the ranks from different weights."""
    first = Gang(tmp_path, 2, attempt=0)
    first.commit(20)
    first.commit(21)
    Gang(tmp_path, 2, "_2", attempt=2).commit(21, ranks=[0])
    res = resolve(tmp_path, True, world_size=2)
    assert res.key == StepKey(1, 20), res
    assert last_complete(tmp_path).key == StepKey(1, 20)
    Gang(tmp_path, 2, "_2", attempt=2).commit(21, ranks=[1])
    assert resolve(tmp_path, True, world_size=2).key == StepKey(1, 21)
    # Outside respawn (no attempt recorded) files pair as before.
    Gang(tmp_path / "plain", 2).commit(5, ranks=[0])
    Gang(tmp_path / "plain", 2, "_1", attempt=None).commit(5, ranks=[1])
    assert resolve(tmp_path / "plain", True, world_size=2).key == StepKey(1, 5)


def test_a_resized_gang_finds_the_old_gangs_newest_complete_step(tmp_path: Path) -> None:
    gang = Gang(tmp_path, 2)
    gang.commit(1)
    gang.commit(2)
    gang.commit(3, ranks=[0])  # rank 1 died before committing step 3
    with pytest.raises(ResolveError, match="auto_trans_ckpt"):
        resolve(tmp_path, True, world_size=1)
    res = resolve(tmp_path, True, world_size=1, resize=True)
    assert (res.key, res.world_size) == (StepKey(1, 2), 2)
    assert res.files == {r: tmp_path / f"rank_{r}" / f"job_rank_{r}-1_2.ckpt" for r in (0, 1)}
    # The resized job crashes before its first commit: the same answer again.
    assert resolve(tmp_path, True, world_size=4, resize=True).key == StepKey(1, 2)


def test_a_new_gang_step_missing_on_one_of_its_ranks_falls_back_to_the_old_gang(tmp_path: Path) -> None:
    Gang(tmp_path, 1).commit(1)
    Gang(tmp_path, 2, "_1").commit(2, ranks=[0])  # the 2-rank gang's rank 1 never committed
    res = resolve(tmp_path, True, world_size=2, resize=True)
    assert (res.key, res.world_size) == (StepKey(1, 1), 1)


def test_named_step_of_another_gang(tmp_path: Path) -> None:
    Gang(tmp_path, 2).commit(1)
    with pytest.raises(ResolveError, match="auto_trans_ckpt"):
        resolve(tmp_path, "job_rank_0-1_1.ckpt", world_size=1)
    res = resolve(tmp_path, "job_rank_0-1_1.ckpt", world_size=1, resize=True)
    assert (res.world_size, sorted(res.files)) == (2, [0, 1])


# ---------------------------------------------------------------------------------------------- merge


class FakeFramework:
    """Checkpoint files as JSON {name: value}; counts reads and writes."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.writes = 0

    def read(self, path: Path) -> dict[str, Any]:
        self.reads.append(path.name)
        return dict(json.loads(path.read_text()))

    def write(self, params: dict[str, Any], path: Path, fmt: str) -> None:
        self.writes += 1
        path.write_text(json.dumps(params, sort_keys=True))


PARAMS = {"w1": [1.0, 2.0], "w2": [3.0], "adam_m.w1": [0.5, 0.5], "global_step": [6]}
EXTRAS = {"respawn.global_step": 6, "respawn.data_step": 6}


def shards(out: Path, owners: dict[str, int], world: int) -> dict[int, Path]:
    """A step saved by `world` ranks, each holding the parameters `owners` gives it, plus strategy files."""
    files = {}
    (out / "strategy").mkdir(parents=True, exist_ok=True)
    for rank in range(world):
        d = out / "checkpoint" / f"rank_{rank}"
        d.mkdir(parents=True, exist_ok=True)
        saved = {k for k, r in owners.items() if r in (rank, -1)}
        files[rank] = d / f"job_rank_{rank}-1_6.ckpt"
        files[rank].write_text(json.dumps({**{k: PARAMS[k] for k in saved}, **EXTRAS}))
        body = strategy_body(rank=rank, world_size=world, saved=saved, batch_size=4, remove_redundancy=True)
        strategy_path(out / "strategy", rank).write_bytes(body)
    return files


def merged(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


SPLIT = {"w1": 0, "w2": 1, "adam_m.w1": 1, "global_step": 0}


def test_merge_takes_each_parameter_from_the_rank_that_saved_it(tmp_path: Path) -> None:
    files = shards(tmp_path, SPLIT, 2)
    fw = FakeFramework()
    path = unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)
    assert path.parent == tmp_path / UNIFIED_DIR and path.name == "unified-1_6.ckpt"
    assert merged(path) == {**PARAMS, **EXTRAS}
    meta = read_unified_meta(path.parent)
    assert meta is not None and meta.key == StepKey(1, 6) and meta.file == path.name
    assert meta.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not [n for n in os.listdir(path.parent) if n.startswith(".tmp-")]


def test_replicated_shards_are_read_once(tmp_path: Path) -> None:
    files = shards(tmp_path, dict.fromkeys(PARAMS, -1), 2)  # every rank saved everything
    fw = FakeFramework()
    path = unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)
    assert merged(path) == {**PARAMS, **EXTRAS}
    assert fw.reads == ["job_rank_0-1_6.ckpt"]  # the strategy says rank 0 holds it all


def test_a_merge_is_reused_and_a_half_written_one_is_not(tmp_path: Path) -> None:
    files = shards(tmp_path, SPLIT, 2)
    fw = FakeFramework()
    path = unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)
    assert unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write) == path
    assert fw.writes == 1
    # A crash after the merged file was renamed but before meta.json: no meta, so merged again.
    (path.parent / "meta.json").unlink()
    (path.parent / ".tmp-1-abc-unified-1_6.ckpt").write_text("torn")
    assert unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write) == path
    assert fw.writes == 2 and merged(path) == {**PARAMS, **EXTRAS}
    assert sorted(os.listdir(path.parent)) == ["meta.json", path.name]
    # The merged file damaged behind meta.json's back: merged again.
    path.write_text(path.read_text().replace("3.0", "4.0"))
    unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)
    assert fw.writes == 3 and merged(path)["w2"] == [3.0]


def test_a_merge_of_another_step_replaces_the_old_one(tmp_path: Path) -> None:
    files = shards(tmp_path, SPLIT, 2)
    fw = FakeFramework()
    old = unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)
    new = unify(tmp_path, StepKey(1, 7), files, read=fw.read, write=fw.write)
    assert not old.exists() and new.exists()
    assert sorted(os.listdir(new.parent)) == ["meta.json", "unified-1_7.ckpt"]


def test_a_stale_strategy_is_covered_by_the_other_shards(tmp_path: Path) -> None:
    files = shards(tmp_path, SPLIT, 2)
    # The strategy of a later (replicated) gang of the same size claims rank 0 holds everything.
    for rank in (0, 1):
        body = strategy_body(
            rank=rank, world_size=2, saved=set(PARAMS), batch_size=4, remove_redundancy=False
        )
        strategy_path(tmp_path / "strategy", rank).write_bytes(body)
    fw = FakeFramework()
    assert merged(unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)) == {**PARAMS, **EXTRAS}


def test_merge_errors_are_permanent_and_write_nothing(tmp_path: Path) -> None:
    files = shards(tmp_path, SPLIT, 2)
    fw = FakeFramework()
    strategy_path(tmp_path / "strategy", 1).write_bytes(
        strategy_body(rank=1, world_size=4, saved={"w2"}, batch_size=4, remove_redundancy=True)
    )
    with pytest.raises(MergeError, match="describes rank 1 of 4"):
        unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)
    strategy_path(tmp_path / "strategy", 1).unlink()
    with pytest.raises(MergeError, match="only checkpoints written with use_parallel"):
        unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)
    body = strategy_body(rank=1, world_size=2, saved={"w2", "w9"}, batch_size=4, remove_redundancy=True)
    strategy_path(tmp_path / "strategy", 1).write_bytes(body)
    with pytest.raises(MergeError, match="no shard holds parameter w9"):
        unify(tmp_path, StepKey(1, 6), files, read=fw.read, write=fw.write)
    assert fw.writes == 0 and not list((tmp_path / UNIFIED_DIR).glob("unified-*"))


def test_a_single_shard_needs_no_strategy(tmp_path: Path) -> None:
    d = tmp_path / "checkpoint" / "rank_0"
    d.mkdir(parents=True)
    (d / "job_rank_0-1_6.ckpt").write_text(json.dumps({**PARAMS, **EXTRAS}))
    fw = FakeFramework()
    path = unify(tmp_path, StepKey(1, 6), {0: d / "job_rank_0-1_6.ckpt"}, read=fw.read, write=fw.write)
    assert merged(path) == {**PARAMS, **EXTRAS}


# -------------------------------------------------------------------------------------------- rescale


@pytest.mark.parametrize(
    ("old", "new", "data_step", "steps_per_epoch", "expected"),
    [
        (8, 4, 6, 20, (1, 12, 12)),  # 2 ranks x 4 -> 1 rank x 4: twice the steps
        (4, 8, 7, 10, (1, 3, 3)),  # half a batch consumed is redone
        (8, 4, 16, 20, (2, 12, 32)),  # into the second epoch
        (8, 8, 6, 10, (1, 6, 6)),
    ],
)
def test_rescale_keeps_the_position_in_samples(
    old: int, new: int, data_step: int, steps_per_epoch: int, expected: tuple[int, int, int]
) -> None:
    before = Progress(epoch=0, step=0, global_step=data_step, data_step=data_step, global_batch_size=old)
    after = rescale_progress(before, old=old, new=new, steps_per_epoch=steps_per_epoch)
    assert (after.epoch, after.step, after.data_step) == expected
    assert after.global_batch_size == new
    # Samples consumed: never more than before (nothing skipped), less than one new batch redone.
    assert before.data_step * old - new < after.data_step * new <= before.data_step * old
    # The optimizer step (the LR's input) is rescaled by the same rule as the global step.
    assert after.global_step == rescale_steps(before.global_step, old=old, new=new)


def test_rescale_continues_the_lr_curve_in_samples() -> None:
    """The LR is a function of the optimizer step; after the rescale it is the value the schedule
    has at the same number of samples seen (to one new batch)."""

    def lr(step: int, batch: int) -> float:  # a linear decay over 640 samples, in steps of `batch`
        return 1.0 - step * batch / 640

    for old, new, step in [(8, 4, 30), (4, 8, 31), (8, 16, 40)]:
        rescaled = rescale_steps(step, old=old, new=new)
        assert 0 <= lr(rescaled, new) - lr(step, old) < new / 640


# ------------------------------------------------------------------------------- scheduler address


def test_the_scheduler_name_the_controller_gives_is_resolved_for_mindspore() -> None:
    """MindSpore parses MS_SCHED_HOST as an IP only; the controller sets rank 0's DNS name, which
    exists only once that pod runs."""
    answers: Iterator[OSError | str] = iter([OSError("not yet"), OSError("not yet"), "127.0.0.7"])

    def lookup(host: str) -> str:
        answer = next(answers)
        if isinstance(answer, OSError):
            raise answer
        return answer

    assert scheduler_ip("llm-a0-0.llm.team.svc", lookup=lookup) == "127.0.0.7"
    assert scheduler_ip("127.0.0.1", lookup=lambda h: pytest.fail("an IP needs no lookup")) == "127.0.0.1"

    def never(host: str) -> str:
        raise OSError("no such host")

    with pytest.raises(RuntimeError, match="MS_SCHED_HOST=nowhere did not resolve"):
        scheduler_ip("nowhere", timeout=0.0, lookup=never)
