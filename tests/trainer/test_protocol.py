"""The commit protocol, pruning, names and the step log, without MindSpore (a fake backend writes bytes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from respawn_protocol.layout import StepKey, in_family, next_run_prefix, parse_name, substitute_rank
from respawn_protocol.meta import read_meta
from respawn_protocol.resolve import resolve
from respawn_protocol.steplog import StepLog, effective_steps, read_steps
from trainer_image.checkpoint.checkpointer import Checkpointer
from trainer_image.checkpoint.faults import FaultPlan
from trainer_image.checkpoint.progress import Progress
from trainer_image.checkpoint.snapshot import Snapshot
from trainer_image.config import CheckpointFormat, CheckpointMonitor


class FakeBackend:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save(
        self, path: Path, fmt: CheckpointFormat, progress: Progress, *, network_only: bool = False
    ) -> None:
        path.write_bytes(json.dumps({"gs": progress.global_step, "net": network_only}).encode() + b"\0" * 64)

    def snapshot(self) -> Snapshot:
        return Snapshot({"w": np.zeros(4, np.float32)}, {"w": np.empty(4, np.float32)})

    def write_snapshot(
        self, snap: Snapshot, path: Path, fmt: CheckpointFormat, progress: Progress | None
    ) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        gs = -1 if progress is None else progress.global_step
        path.write_bytes(json.dumps({"gs": gs}).encode() + snap.arrays["w"].tobytes())


class Crash(Exception):
    pass


def crash(point: str) -> None:
    raise Crash(point)


def checkpointer(
    out: Path, *, keep: int = 2, rank: int = 0, world: int = 1, async_save: bool = False, **kw: object
) -> Checkpointer:
    monitor = CheckpointMonitor(prefix="job", keep_checkpoint_max=keep, async_save=async_save)
    resumed = kw.get("resumed_key")
    # The ranks of one start share a lineage (lineage.py); these tests make them one at a time.
    parent = kw.pop("parent", f"resumed:test@{resumed}" if resumed else "fresh:test")
    return Checkpointer(
        backend=kw.pop("backend", FakeBackend()),  # type: ignore[arg-type]
        monitor=monitor,
        output_dir=out,
        rank=rank,
        world_size=world,
        resumed_key=kw.pop("resumed_key", None),  # type: ignore[arg-type]
        attempt=kw.pop("attempt", None),  # type: ignore[arg-type]
        faults=kw.pop("faults", None),  # type: ignore[arg-type]
        parent=parent,  # type: ignore[arg-type]
    )


def at(gs: int, per_epoch: int = 10) -> Progress:
    return Progress(epoch=(gs - 1) // per_epoch + 1, step=(gs - 1) % per_epoch + 1, global_step=gs)


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_names() -> None:
    parsed = parse_name("qwen_rank_3_2-4_17.safetensors")
    assert parsed is not None and (parsed.prefix, parsed.key, parsed.ext) == (
        "qwen_rank_3_2",
        StepKey(4, 17),
        "safetensors",
    )
    assert parse_name(".tmp-1-ab-qwen_rank_0-1_1.ckpt") is None
    assert parse_name("meta.json") is None
    assert substitute_rank("qwen_rank_0_1-4_17.ckpt", 5) == "qwen_rank_5_1-4_17.ckpt"
    assert in_family("job_rank_0_12", "job_rank_0") and not in_family("job_rank_00", "job_rank_0")
    assert not in_family("job_rank_0_x", "job_rank_0")


def test_prefix_auto_increment(tmp_path: Path) -> None:
    assert next_run_prefix(tmp_path, "job_rank_0") == "job_rank_0"
    (tmp_path / "job_rank_0-1_1.ckpt").touch()
    (tmp_path / "job_rank_0_1-1_2.ckpt").touch()
    assert next_run_prefix(tmp_path, "job_rank_0") == "job_rank_0_2"


def test_run_suffix_is_the_highest_plus_one_as_mindspore_numbers_it(tmp_path: Path) -> None:
    """Not the first free suffix: the runs in between were pruned, and a lower suffix would make
    the new run look older than the one it continues (lineage.run_number)."""
    (tmp_path / "job_rank_0_3-1_9.ckpt").touch()
    (tmp_path / "job_rank_0_3-network-1_9.ckpt").touch()
    (tmp_path / "job_rank_00-1_9.ckpt").touch()  # another rank's family
    assert next_run_prefix(tmp_path, "job_rank_0") == "job_rank_0_4"


def test_pruning_reads_old_and_new_weights_only_names(tmp_path: Path) -> None:
    """Weights-only copies written before they carried MindFormers' `-network` tag have the full
    checkpoint's name; both kinds are this job's files, pruned once a newer step is committed."""
    network = tmp_path / "checkpoint_network" / "rank_0"
    network.mkdir(parents=True)
    (network / "job_rank_0-1_1.ckpt").write_bytes(b"old name")
    (network / "other_rank_0-network-1_1.ckpt").write_bytes(b"another job's")
    ck = checkpointer(tmp_path, keep=1)
    ck.save(at(2))
    ck.save(at(3))
    assert names(network) == ["job_rank_0_1-network-1_3.ckpt", "other_rank_0-network-1_1.ckpt"]


def test_commit_writes_file_network_copy_and_meta(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path)
    ck.save(at(1))
    rank0 = tmp_path / "checkpoint" / "rank_0"
    assert names(rank0) == ["job_rank_0-1_1.ckpt", "meta.json"]
    # The weights-only copy is named as MindFormers names it.
    assert names(tmp_path / "checkpoint_network" / "rank_0") == ["job_rank_0-network-1_1.ckpt"]
    meta = read_meta(rank0)
    assert meta is not None and (meta.last_epoch, meta.last_step, meta.last_global_step) == (1, 1, 1)
    assert meta.checkpoints[0].size == (rank0 / "job_rank_0-1_1.ckpt").stat().st_size
    # Nothing for other users (tenants share the volume), whatever the umask.
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*")}
    assert modes == {
        "checkpoint": "0o750",
        "checkpoint/rank_0": "0o750",
        "checkpoint/rank_0/job_rank_0-1_1.ckpt": "0o640",
        "checkpoint/rank_0/meta.json": "0o640",
        "checkpoint_network": "0o750",
        "checkpoint_network/rank_0": "0o750",
        "checkpoint_network/rank_0/job_rank_0-network-1_1.ckpt": "0o640",
    }


def test_records_name_the_attempt_that_wrote_them(tmp_path: Path) -> None:
    checkpointer(tmp_path, attempt=3).save(at(1))
    checkpointer(tmp_path / "manual").save(at(1))
    meta = read_meta(tmp_path / "checkpoint" / "rank_0")
    manual = read_meta(tmp_path / "manual" / "checkpoint" / "rank_0")
    assert meta is not None and [r.attempt for r in meta.checkpoints] == [3]
    assert manual is not None and [r.attempt for r in manual.checkpoints] == [None]


@pytest.mark.parametrize("point", ["before_publish", "after_publish", "after_meta", "after_prune"])
def test_a_crash_anywhere_in_a_save_leaves_a_complete_checkpoint(tmp_path: Path, point: str) -> None:
    rank0 = tmp_path / "checkpoint" / "rank_0"
    checkpointer(tmp_path, keep=1).save(at(1))
    ck = checkpointer(tmp_path, keep=1, resumed_key=StepKey(1, 1), faults=FaultPlan(f"{point}:1", crash))
    with pytest.raises(Crash):
        ck.save(at(2))
    committed = point in ("after_meta", "after_prune")
    assert resolve(tmp_path / "checkpoint", True).key == StepKey(1, 2 if committed else 1)
    # keep_checkpoint_max=1 deletes the old step only after the new one is committed
    assert (rank0 / "job_rank_0-1_1.ckpt").exists() == (point != "after_prune")
    restarted = checkpointer(tmp_path, keep=1, resumed_key=StepKey(1, 2 if committed else 1))
    assert not [n for n in names(rank0) if n.startswith(".tmp-")]
    restarted.save(at(3) if committed else at(2))
    assert len([n for n in names(rank0) if n.endswith(".ckpt")]) == 1


def test_keep_max_one_leaves_exactly_the_newest(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path, keep=1)
    for gs in range(1, 5):
        ck.save(at(gs))
    assert names(tmp_path / "checkpoint" / "rank_0") == ["job_rank_0-1_4.ckpt", "meta.json"]
    assert names(tmp_path / "checkpoint_network" / "rank_0") == ["job_rank_0-network-1_4.ckpt"]
    meta = read_meta(tmp_path / "checkpoint" / "rank_0")
    assert meta is not None and [r.file for r in meta.checkpoints] == ["job_rank_0-1_4.ckpt"]


def test_pruning_covers_earlier_runs_but_not_other_jobs(tmp_path: Path) -> None:
    rank0 = tmp_path / "checkpoint" / "rank_0"
    first = checkpointer(tmp_path, keep=5)
    for gs in (1, 2, 3):
        first.save(at(gs))
    (rank0 / "other_rank_0-1_1.ckpt").write_bytes(b"someone else's")
    second = checkpointer(tmp_path, keep=2, resumed_key=StepKey(1, 3))
    assert second.prefix == "job_rank_0_1"
    second.save(at(4))
    second.save(at(5))
    assert names(rank0) == [
        "job_rank_0_1-1_4.ckpt",
        "job_rank_0_1-1_5.ckpt",
        "meta.json",
        "other_rank_0-1_1.ckpt",
    ]


def test_resuming_an_older_step_abandons_the_newer_branch(tmp_path: Path) -> None:
    rank0 = tmp_path / "checkpoint" / "rank_0"
    first = checkpointer(tmp_path, keep=10)
    for gs in range(1, 6):
        first.save(at(gs))
    second = checkpointer(tmp_path, keep=10, resumed_key=StepKey(1, 2))
    second.save(at(3))
    meta = read_meta(rank0)
    assert meta is not None and [r.global_step for r in meta.checkpoints] == [1, 2, 3]
    assert names(rank0) == [
        "job_rank_0-1_1.ckpt",
        "job_rank_0-1_2.ckpt",
        "job_rank_0_1-1_3.ckpt",
        "meta.json",
    ]


def test_never_prunes_the_newest_step_complete_on_every_rank(tmp_path: Path) -> None:
    rank1 = checkpointer(tmp_path, rank=1, world=2, keep=1)
    rank0 = checkpointer(tmp_path, rank=0, world=2, keep=1)
    rank1.save(at(1))
    for gs in (1, 2, 3):
        rank0.save(at(gs))
    kept = names(tmp_path / "checkpoint" / "rank_0")
    assert kept == ["job_rank_0-1_1.ckpt", "job_rank_0-1_3.ckpt", "meta.json"]
    assert resolve(tmp_path / "checkpoint", True, world_size=2).key == StepKey(1, 1)


def test_a_grown_gang_keeps_the_step_it_resumed_from_until_its_own_is_complete(tmp_path: Path) -> None:
    """1 -> 2 ranks: the global batch doubles, so the new gang's step numbers restart below the
    merged step. Until a step of the new gang is complete on both ranks, the old gang's step stays
    the resume point, in rank 0's meta.json and on disk, whichever rank commits first."""
    root, rank0 = tmp_path / "checkpoint", tmp_path / "checkpoint" / "rank_0"
    old = checkpointer(tmp_path, keep=2)
    for gs in (38, 39, 40):
        old.save(at(gs, per_epoch=50))
    resumed = StepKey(1, 40)
    new0 = checkpointer(tmp_path, keep=2, rank=0, world=2, resumed_key=resumed)
    new0.save(at(21, per_epoch=25))
    # A crash now (rank 1 has not committed step 21) resumes from the merged step again.
    res = resolve(root, True, world_size=2, resize=True)
    assert (res.key, res.world_size) == (resumed, 1), res
    assert res.files[0].is_file()
    new1 = checkpointer(tmp_path, keep=2, rank=1, world=2, resumed_key=resumed)
    new1.save(at(21, per_epoch=25))
    res = resolve(root, True, world_size=2, resize=True)
    assert (res.key, res.world_size) == (StepKey(1, 21), 2), res
    new0.save(at(22, per_epoch=25))
    meta = read_meta(rank0)
    assert meta is not None
    assert [(r.global_step, r.world_size) for r in meta.checkpoints] == [(21, 2), (22, 2)]
    assert not [n for n in names(rank0) if "-1_4" in n or "-1_39" in n], names(rank0)


def test_async_save_commits_in_order_and_reports_failures(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path, keep=3, async_save=True)
    for gs in (1, 2, 3):
        ck.save(at(gs))
    ck.wait()
    meta = read_meta(tmp_path / "checkpoint" / "rank_0")
    assert meta is not None and [r.global_step for r in meta.checkpoints] == [1, 2, 3]
    failing = checkpointer(tmp_path / "full", async_save=True, backend=FakeBackend(fail=True))
    failing.save(at(1))
    with pytest.raises(RuntimeError, match="No space left"):
        failing.wait()
    assert read_meta(tmp_path / "full" / "checkpoint" / "rank_0") is None


def test_step_log_survives_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "log" / "steps.jsonl"
    log = StepLog(path)
    log.write({"global_step": 1, "loss": 1.0})
    log.write({"global_step": 2, "loss": 2.0})
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"global_step": 3, "lo')  # killed mid-write
    assert [r["global_step"] for r in read_steps(path)] == [1, 2]
    log = StepLog(path)  # the resumed run
    log.write({"global_step": 2, "loss": 2.5})
    log.close()
    records = read_steps(path)
    assert [r["global_step"] for r in records] == [1, 2, 2]
    assert effective_steps(records)[2]["loss"] == 2.5
