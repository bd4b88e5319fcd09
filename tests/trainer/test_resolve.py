"""Resume resolution on hand-made checkpoint directories: every fallback rule, and read-only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from respawn_protocol.layout import StepKey
from respawn_protocol.meta import Meta, Record, meta_path
from respawn_protocol.resolve import Check, ResolveError, last_complete, resolve
from tests.support.trainer import tree


def safetensors_bytes(payload: bytes = b"\0" * 16) -> bytes:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [len(payload) // 4], "data_offsets": [0, len(payload)]}}
    )
    return len(header).to_bytes(8, "little") + header.encode() + payload


class Job:
    """Writes checkpoint directories the way the trainer does, or damages them on purpose."""

    def __init__(self, root: Path, world: int = 1, prefix: str = "job", fmt: str = "ckpt") -> None:
        self.root, self.world, self.prefix, self.fmt = root, world, prefix, fmt
        self.history: dict[int, list[Record]] = {r: [] for r in range(world)}
        for r in range(world):
            (root / f"rank_{r}").mkdir(parents=True, exist_ok=True)

    def name(self, rank: int, epoch: int, step: int, suffix: str = "") -> str:
        return f"{self.prefix}_rank_{rank}{suffix}-{epoch}_{step}.{self.fmt}"

    def file(self, rank: int, epoch: int, step: int, suffix: str = "") -> Path:
        path = self.root / f"rank_{rank}" / self.name(rank, epoch, step, suffix)
        data = (
            safetensors_bytes(bytes([epoch, step]) * 8)
            if self.fmt == "safetensors"
            else bytes([epoch, step]) * 50
        )
        path.write_bytes(data)
        return path

    def commit(
        self,
        epoch: int,
        step: int,
        *,
        ranks: list[int] | None = None,
        gs: int | None = None,
        suffix: str = "",
        lineage: str | None = None,
    ) -> None:
        for r in range(self.world) if ranks is None else ranks:
            path = self.file(r, epoch, step, suffix)
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            rec = Record(path.name, epoch, step, gs or step, len(data), digest, lineage=lineage)
            self.history[r].append(rec)
            meta = Meta(epoch, step, path.name, rec.global_step, list(self.history[r]))
            meta_path(path.parent).write_bytes(meta.to_json())

    def path(self, rank: int, epoch: int, step: int) -> Path:
        return self.root / f"rank_{rank}" / self.name(rank, epoch, step)


def latest(root: Path, **kw: object) -> tuple[StepKey | None, list[str]]:
    res = resolve(root, True, **kw)  # type: ignore[arg-type]
    return res.key, list(res.warnings)


def test_empty_directory_is_random_init(tmp_path: Path) -> None:
    res = resolve(tmp_path, True)
    assert res.random_init and res.source == "none" and not res.warnings


def test_only_empty_rank_folders_is_random_init(tmp_path: Path) -> None:
    (tmp_path / "rank_0").mkdir()
    (tmp_path / "rank_1").mkdir()
    (tmp_path / "lost+found").mkdir()
    assert resolve(tmp_path, True).random_init
    assert resolve(tmp_path, True, world_size=2).random_init
    assert resolve(tmp_path, True, world_size=1).random_init


def test_missing_directory_is_an_error_unless_it_is_the_jobs_own(tmp_path: Path) -> None:
    with pytest.raises(ResolveError, match="does not exist"):
        resolve(tmp_path / "nope", True)
    assert resolve(tmp_path / "nope", True, missing_ok=True).random_init
    assert resolve("", True).random_init


def test_newest_committed_step(tmp_path: Path) -> None:
    job = Job(tmp_path)
    for s in (1, 2, 3):
        job.commit(1, s, gs=s)
    res = resolve(tmp_path, True)
    assert res.key == StepKey(1, 3) and res.global_step == 3 and not res.warnings
    assert res.files == {0: job.path(0, 1, 3)}


def test_steps_order_by_epoch_then_step(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 12)
    job.commit(2, 1)
    assert latest(tmp_path)[0] == StepKey(2, 1)


def test_minimum_over_ranks_of_meta(tmp_path: Path) -> None:
    job = Job(tmp_path, world=2)
    job.commit(1, 1)
    job.commit(1, 2)
    job.commit(1, 3, ranks=[0])  # rank 1 has not committed step 3 yet
    job.file(1, 1, 3)  # ... even though its file exists (written, not committed)
    assert latest(tmp_path, world_size=2)[0] == StepKey(1, 2)
    assert latest(tmp_path)[0] == StepKey(1, 2)  # world size discovered from rank_N/


def test_uncommitted_files_newer_than_meta_are_ignored(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    job.file(0, 1, 2)
    assert latest(tmp_path)[0] == StepKey(1, 1)


def test_without_meta_the_newest_step_present_on_every_rank(tmp_path: Path) -> None:
    job = Job(tmp_path, world=2)
    for s in (1, 2):
        job.file(0, 1, s)
        job.file(1, 1, s)
    job.file(0, 1, 3)
    key, warnings = latest(tmp_path, world_size=2)
    assert key == StepKey(1, 2) and not warnings


def test_truncated_file_falls_back_with_a_warning(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    job.commit(1, 2)
    with open(job.path(0, 1, 2), "r+b") as f:
        f.truncate(10)
    for check in (Check.SIZE, Check.DIGEST):
        key, warnings = latest(tmp_path, check=check)
        assert key == StepKey(1, 1)
        assert any("size 10 != recorded" in w for w in warnings)


def test_corrupt_content_of_the_same_size_needs_the_digest(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    job.commit(1, 2)
    data = bytearray(job.path(0, 1, 2).read_bytes())
    data[5] ^= 0xFF
    job.path(0, 1, 2).write_bytes(bytes(data))
    assert latest(tmp_path, check=Check.SIZE)[0] == StepKey(1, 2)  # the controller's cheap view
    key, warnings = latest(tmp_path, check=Check.DIGEST)  # what the trainer loads
    assert key == StepKey(1, 1) and any("sha256" in w for w in warnings)


def test_meta_naming_a_missing_file_falls_back(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    job.commit(1, 2)
    job.path(0, 1, 2).unlink()
    key, warnings = latest(tmp_path)
    assert key == StepKey(1, 1)
    assert any("names job_rank_0-1_2.ckpt, which is missing" in w for w in warnings)


def test_damage_on_one_rank_falls_back_on_all(tmp_path: Path) -> None:
    job = Job(tmp_path, world=2)
    job.commit(1, 1)
    job.commit(1, 2)
    job.path(1, 1, 2).write_bytes(b"")
    res = resolve(tmp_path, True, world_size=2)
    assert res.key == StepKey(1, 1) and set(res.files) == {0, 1}


def test_unrecorded_truncated_safetensors_is_detected_from_its_header(tmp_path: Path) -> None:
    job = Job(tmp_path, fmt="safetensors")
    job.file(0, 1, 1)
    path = job.file(0, 1, 2)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 3)
    key, warnings = latest(tmp_path, formats=("safetensors",), check=Check.SIZE)
    assert key == StepKey(1, 1) and any("data ends at byte" in w for w in warnings)


def test_files_that_failed_to_load_are_excluded(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    job.commit(1, 2)
    res = resolve(tmp_path, True, exclude={job.path(0, 1, 2)})
    assert res.key == StepKey(1, 1) and any("failed to load" in w for w in res.warnings)


def test_never_random_init_while_an_older_complete_step_exists(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    for s in (2, 3, 4):
        job.commit(1, s)
        job.path(0, 1, s).write_bytes(b"garbage")
    assert latest(tmp_path)[0] == StepKey(1, 1)


def test_nothing_intact_is_random_init_with_a_warning(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    job.path(0, 1, 1).write_bytes(b"")
    res = resolve(tmp_path, True)
    assert res.random_init and any("no step is complete and intact" in w for w in res.warnings)


def test_unreadable_meta_is_ignored_with_a_warning(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    job.file(0, 1, 2)
    meta_path(tmp_path / "rank_0").write_text('{"last_epoch": 1, "last_st')  # torn by a foreign writer
    key, warnings = latest(tmp_path)
    assert key == StepKey(1, 2) and any("unreadable meta.json" in w for w in warnings)


def test_meta_entries_leading_outside_are_ignored(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    job = Job(ckpt)
    job.commit(1, 1)
    outside = tmp_path / "job_rank_0-1_9.ckpt"
    outside.write_bytes(b"x" * 10)
    meta = json.loads(meta_path(ckpt / "rank_0").read_text())
    meta["checkpoints"].append({**meta["checkpoints"][0], "file": "../../job_rank_0-1_9.ckpt", "step": 9})
    meta.update(last_step=9, last_ckpt_file="../../job_rank_0-1_9.ckpt")
    meta_path(ckpt / "rank_0").write_text(json.dumps(meta))
    res = resolve(ckpt, True)
    assert res.key == StepKey(1, 1) and res.files[0].parent == ckpt / "rank_0"
    assert any("ignoring bad entry" in w for w in res.warnings)


def test_symlinks_leading_outside_are_ignored(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    job = Job(ckpt)
    job.commit(1, 1)
    target = tmp_path / "elsewhere.ckpt"
    target.write_bytes(b"x" * 100)
    os.symlink(target, ckpt / "rank_0" / "job_rank_0-1_5.ckpt")
    other = tmp_path / "other_rank"
    other.mkdir()
    (other / "job_rank_1-1_1.ckpt").write_bytes(b"x")
    os.symlink(other, ckpt / "rank_1")
    key, warnings = latest(ckpt, world_size=1)
    assert key == StepKey(1, 1)
    assert any("job_rank_0-1_5.ckpt is a symlink; ignored" in w for w in warnings)
    assert any("rank_1 is a symlink; ignored" in w for w in warnings)


def test_symlinks_staying_inside_are_ignored_too(tmp_path: Path) -> None:
    """A link that stays inside is not followed either: one rule, no realpath to get wrong."""
    job = Job(tmp_path, world=2)
    job.commit(1, 1)
    os.symlink(job.path(0, 1, 1), tmp_path / "rank_0" / "job_rank_0-1_5.ckpt")
    os.symlink(tmp_path / "rank_1", tmp_path / "rank_2")
    key, warnings = latest(tmp_path, world_size=2)
    assert key == StepKey(1, 1)
    assert any("job_rank_0-1_5.ckpt is a symlink; ignored" in w for w in warnings)


def test_named_step_with_rank_substitution(tmp_path: Path) -> None:
    job = Job(tmp_path, world=2)
    for s in (1, 2, 3):
        job.commit(1, s, gs=10 + s)
    res = resolve(tmp_path, "job_rank_0-1_2.ckpt", world_size=2)
    assert res.key == StepKey(1, 2) and res.global_step == 12
    assert res.files == {0: job.path(0, 1, 2), 1: job.path(1, 1, 2)}


def test_named_step_without_extension_gets_the_configured_format(tmp_path: Path) -> None:
    """MindFormers appends `.{load_ckpt_format}` to a `resume_training` name without one."""
    Job(tmp_path, world=2).commit(1, 2)
    st = Job(tmp_path, world=2, fmt="safetensors")
    st.commit(1, 3)
    res = resolve(tmp_path, "job_rank_0-1_2", formats=("ckpt",))
    assert res.files == {r: tmp_path / f"rank_{r}" / f"job_rank_{r}-1_2.ckpt" for r in (0, 1)}
    res = resolve(tmp_path, "job_rank_1-1_3", formats=("safetensors",))
    assert res.files[0].name == "job_rank_0-1_3.safetensors"


def test_named_step_missing_on_a_rank_is_an_error(tmp_path: Path) -> None:
    job = Job(tmp_path, world=2)
    job.commit(1, 1)
    job.commit(1, 2)
    job.path(1, 1, 2).unlink()
    with pytest.raises(ResolveError, match=r"rank 1: job_rank_1-1_2.ckpt is missing"):
        resolve(tmp_path, "job_rank_0-1_2.ckpt", world_size=2)


def test_named_step_that_is_damaged_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.commit(1, 1)
    job.commit(1, 2)
    job.path(0, 1, 2).write_bytes(b"short")
    with pytest.raises(ResolveError, match="size 5 != recorded"):
        resolve(tmp_path, "job_rank_0-1_2.ckpt")


@pytest.mark.parametrize(
    "name", ["../rank_0/job_rank_0-1_1.ckpt", "/etc/passwd", "..", "x.ckpt", "job_rank_0-1_1.txt"]
)
def test_named_step_must_be_a_plain_checkpoint_name(tmp_path: Path, name: str) -> None:
    Job(tmp_path).commit(1, 1)
    with pytest.raises(ResolveError):
        resolve(tmp_path, name)


def test_named_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    Job(ckpt).commit(1, 1)
    (tmp_path / "secret.ckpt").write_bytes(b"x" * 100)
    os.symlink(tmp_path / "secret.ckpt", ckpt / "rank_0" / "job_rank_0-1_7.ckpt")
    with pytest.raises(ResolveError, match="is a symlink"):
        resolve(ckpt, "job_rank_0-1_7.ckpt")


def test_without_meta_the_latest_run_wins_over_higher_step_numbers(tmp_path: Path) -> None:
    """MindSpore numbers runs upwards and a resumed MindFormers run restarts its (epoch, step)
    numbering: without meta.json the later run is the newer state, whatever its step numbers."""
    job = Job(tmp_path)
    job.file(0, 1, 3)  # first run, no meta
    job.file(0, 1, 5, suffix="_1")  # second run (prefix auto-incremented)
    job.file(0, 1, 4, suffix="_2")
    res = resolve(tmp_path, True)
    assert res.key == StepKey(1, 4) and res.files[0].name == "job_rank_0_2-1_4.ckpt"
    (tmp_path / "rank_0" / "job_rank_0_2-1_4.ckpt").write_bytes(b"")  # damaged: the run before
    assert resolve(tmp_path, True).files[0].name == "job_rank_0_1-1_5.ckpt"


def test_a_step_pairs_only_files_of_one_lineage(tmp_path: Path) -> None:
    """A branch resumed from step 2: rank 0 committed the new branch's step 3, rank 1 died before
    its first commit and still records the abandoned branch's step 3 (issue 14)."""
    job = Job(tmp_path, world=2)
    for step in (1, 2, 3):
        job.commit(1, step, lineage="a")
    job.commit(1, 3, ranks=[0], suffix="_1", lineage="b")
    res = resolve(tmp_path, True)
    assert res.key == StepKey(1, 2) and res.lineage == "a", res
    job.commit(1, 3, ranks=[1], suffix="_1", lineage="b")
    assert resolve(tmp_path, True).files[1].name == "job_rank_1_1-1_3.ckpt"


def test_records_with_and_without_lineage_do_not_pair(tmp_path: Path) -> None:
    """A record without lineage was written before lineages existed, so by another start."""
    job = Job(tmp_path, world=2)
    job.commit(1, 1)
    job.commit(1, 2)
    job.commit(1, 2, ranks=[0], suffix="_1", lineage="b")
    assert resolve(tmp_path, True).key == StepKey(1, 1)


def test_an_unrecorded_file_pairs_only_within_its_run(tmp_path: Path) -> None:
    job = Job(tmp_path, world=2)
    job.commit(1, 1)
    job.path(0, 1, 1).write_bytes(b"damaged")  # no committed step is intact: the last resort
    job.file(0, 1, 2)  # written, not committed
    job.file(1, 1, 2, suffix="_1")  # another start's
    assert resolve(tmp_path, True).random_init
    job.path(1, 1, 2).with_name("job_rank_1_1-1_2.ckpt").rename(job.path(1, 1, 2))
    assert resolve(tmp_path, True).key == StepKey(1, 2)


def test_meta_json_of_mindformers_resolves_one_run_newest_first(tmp_path: Path) -> None:
    """MindFormers' meta.json has only last_epoch, last_step, last_ckpt_file; its resumed run
    restarts (epoch, step) under `_1`, so `_1-1_2` is newer than `-1_6`."""
    job = Job(tmp_path, world=2)
    for r in (0, 1):
        for step in (4, 6):
            job.file(r, 1, step)
        job.file(r, 1, 2, suffix="_1")
        meta = {"last_epoch": 1, "last_step": 2, "last_ckpt_file": job.name(r, 1, 2, "_1")}
        (tmp_path / f"rank_{r}" / "meta.json").write_text(json.dumps(meta))
    assert resolve(tmp_path, True).files[0].name == "job_rank_0_1-1_2.ckpt"
    (tmp_path / "rank_1" / "job_rank_1_1-1_2.ckpt").unlink()  # rank 1 never reached run _1
    meta = {"last_epoch": 1, "last_step": 6, "last_ckpt_file": job.name(1, 1, 6)}
    (tmp_path / "rank_1" / "meta.json").write_text(json.dumps(meta))
    assert resolve(tmp_path, True).files[0].name == "job_rank_0-1_6.ckpt"


def test_recorded_file_wins_over_an_unrecorded_one_of_the_same_step(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.file(0, 1, 2, suffix="_1")  # abandoned by a crash before its commit
    job.commit(1, 2)
    assert resolve(tmp_path, True).files[0] == job.path(0, 1, 2)


def test_a_flat_folder_resumes_one_rank_from_its_newest_step_with_a_warning(tmp_path: Path) -> None:
    """ModelArts' train_url: one rank's files in one folder, newest by (epoch, step), not by name."""
    for name in ("net-1_9.ckpt", "net-1_10.ckpt", "net-network-1_11.ckpt", "net-graph.meta"):
        (tmp_path / name).write_bytes(b"x" * 10)
    for world in (None, 1):
        res = resolve(tmp_path, True, world_size=world)
        assert (res.files, res.key, res.world_size) == ({0: tmp_path / "net-1_10.ckpt"}, StepKey(1, 10), 1)
        assert any("flat folder" in w and "net-1_10.ckpt" in w for w in res.warnings)
    assert resolve(tmp_path, "net-1_9").files == {0: tmp_path / "net-1_9.ckpt"}
    assert resolve(tmp_path, True, at_most=StepKey(1, 9)).key == StepKey(1, 9)
    (tmp_path / "net-2_1.ckpt").write_bytes(b"")  # empty: damaged
    res = resolve(tmp_path, True, exclude={tmp_path / "net-1_10.ckpt"})
    assert res.key == StepKey(1, 9) and any("net-2_1.ckpt is damaged" in w for w in res.warnings)
    with pytest.raises(ResolveError, match="no such checkpoint"):
        resolve(tmp_path, "net-1_8")
    with pytest.raises(ResolveError, match="cannot resume 2 ranks"):
        resolve(tmp_path, True, world_size=2)


def test_loose_files_next_to_empty_rank_folders_are_an_error(tmp_path: Path) -> None:
    (tmp_path / "rank_0").mkdir()
    (tmp_path / "rank_0" / "meta.json").write_text("{}")
    (tmp_path / "job_rank_0-1_1.ckpt").write_bytes(b"x")
    with pytest.raises(ResolveError, match="that hold none"):
        resolve(tmp_path, True)


def unified_dir(root: Path, data: bytes = b"merged" * 10, **changes: object) -> Path:
    """A merged checkpoint directory as trainer_image/checkpoint/merge.py commits it."""
    root.mkdir()
    (root / "unified-1_6.ckpt").write_bytes(data)
    body = {
        "format_version": 1,
        "file": "unified-1_6.ckpt",
        "epoch": 1,
        "step": 6,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "source_world_size": 2,
        "sources": [{"rank": 0, "file": "a_rank_0-1_6.ckpt", "size": 9}],
        **changes,
    }
    (root / "meta.json").write_text(json.dumps(body))
    return root


def test_a_merged_checkpoint_directory_is_one_full_file_for_every_rank(tmp_path: Path) -> None:
    root = unified_dir(tmp_path / "unified_checkpoint")
    res = resolve(root, True, world_size=3)
    assert res.source == "file" and res.key == StepKey(1, 6)
    assert res.files == {r: root / "unified-1_6.ckpt" for r in range(3)}
    assert resolve(root, "unified-1_6", world_size=1).files == {0: root / "unified-1_6.ckpt"}
    with pytest.raises(ResolveError, match="is not its file"):
        resolve(root, "unified-1_5.ckpt")
    with pytest.raises(ResolveError, match="set load_ckpt_format: ckpt"):
        resolve(root, True, formats=("safetensors",))
    (root / "unified-1_6.ckpt").write_bytes(b"mergeX" * 10)  # same size, other bytes
    assert resolve(root, True, check=Check.SIZE).key == StepKey(1, 6)
    with pytest.raises(ResolveError, match=r"sha256 differs.*merge it again"):
        resolve(root, True, check=Check.DIGEST)
    with pytest.raises(ResolveError, match="not a merged checkpoint's record"):
        resolve(unified_dir(tmp_path / "bad", epoch="x"), True)


def test_a_smaller_world_than_the_checkpoint_is_an_error(tmp_path: Path) -> None:
    Job(tmp_path, world=2).commit(1, 1)
    with pytest.raises(ResolveError, match="world size is 1"):
        resolve(tmp_path, True, world_size=1)


def test_a_single_file_is_full_weights_for_every_rank(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(safetensors_bytes())
    res = resolve(path, False, world_size=2, formats=("safetensors",))
    assert res.source == "file" and res.files == {0: path, 1: path}
    with pytest.raises(ResolveError, match="expected a ckpt file"):
        resolve(path, True, formats=("ckpt",))
    path.write_bytes(b"")
    with pytest.raises(ResolveError, match="empty"):
        resolve(path, True, formats=("safetensors",))


def test_format_filter(tmp_path: Path) -> None:
    Job(tmp_path, fmt="ckpt").commit(1, 1)
    Job(tmp_path, fmt="safetensors", prefix="st").file(0, 1, 4)
    assert latest(tmp_path, formats=("ckpt",))[0] == StepKey(1, 1)
    assert latest(tmp_path, formats=("safetensors",))[0] == StepKey(1, 4)


def test_resolution_only_reads(tmp_path: Path) -> None:
    job = Job(tmp_path, world=2)
    job.commit(1, 1)
    job.commit(1, 2)
    job.path(1, 1, 2).write_bytes(b"")
    (tmp_path / "rank_0" / ".tmp-1-ab-job_rank_0-1_3.ckpt").write_bytes(b"partial")
    before = tree(tmp_path)
    resolve(tmp_path, True, check=Check.DIGEST)
    last_complete(tmp_path)
    resolve(tmp_path, "job_rank_0-1_1.ckpt")
    assert tree(tmp_path) == before


def test_last_complete_is_the_controllers_cheap_view(tmp_path: Path) -> None:
    assert last_complete(tmp_path / "not-yet").random_init
    job = Job(tmp_path, world=2)
    job.commit(1, 1, gs=1)
    job.commit(1, 2, gs=2, ranks=[0])
    res = last_complete(tmp_path)
    assert (res.key, res.global_step) == (StepKey(1, 1), 1)


def test_mindspore_s_merged_safetensors_is_the_whole_directory_for_every_rank(tmp_path: Path) -> None:
    for name in ("part0.safetensors", "part1.safetensors", "hyper_param.safetensors"):
        (tmp_path / name).write_bytes(safetensors_bytes())
    index = {
        "metadata": {"total_size": 32},
        "weight_map": {"a": "part0.safetensors", "b": "part1.safetensors"},
    }
    (tmp_path / "param_name_map.json").write_text(json.dumps(index))
    res = resolve(tmp_path, True, world_size=2, formats=("safetensors",))
    assert res.source == "file" and res.files == {0: tmp_path, 1: tmp_path}
    with pytest.raises(ResolveError, match="set load_ckpt_format: safetensors"):
        resolve(tmp_path, True, formats=("ckpt",))
    (tmp_path / "part1.safetensors").write_bytes(safetensors_bytes()[:-3])
    with pytest.raises(ResolveError, match=r"part1\.safetensors: data ends"):
        resolve(tmp_path, True, formats=("safetensors",))
    (tmp_path / "part1.safetensors").unlink()
    with pytest.raises(ResolveError, match=r"part1\.safetensors: unreadable"):
        resolve(tmp_path, True, formats=("safetensors",))
    index["weight_map"] = {"a": "../x.safetensors"}
    (tmp_path / "param_name_map.json").write_text(json.dumps(index))
    with pytest.raises(ResolveError, match="other than plain"):
        resolve(tmp_path, True, formats=("safetensors",))
