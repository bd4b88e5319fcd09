"""The checkpoint store's uploader and predownload in this process, against a real SeaweedFS
(tests/support/objectstore.py): the order of objects and meta.json, pruning only after a newer
meta.json, skipping to the newest commit, a store that cannot be used, a damaged object never
installed, companion files (GRPO's optimizer files) kept with their checkpoint. The trainer runs
with a store are in test_store_runs.py."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest

from devcluster.controlplane import free_port
from respawn_protocol.layout import StepKey
from respawn_protocol.meta import Record, read_meta
from respawn_protocol.report import Upload
from tests.support.objectstore import ObjectStore, assert_metas_name_only_whole_objects, listing, remote_metas
from tests.support.poll import wait_for
from trainer_image.checkpoint.faults import FaultPlan
from trainer_image.checkpoint.store.client import Settings, StoreError
from trainer_image.checkpoint.store.companions import Companions
from trainer_image.checkpoint.store.download import predownload
from trainer_image.checkpoint.store.upload import Uploader

PREFIX = "team/job"
BASE = "tiny_rank_0"


def settings(store: ObjectStore, name: str, **changes: str) -> Settings:
    """The trainer's view of the test store's bucket `name`, with `changes`."""
    s = Settings.from_env(store.env(name, PREFIX))
    assert s is not None
    return Settings(**{**s.__dict__, **changes})


def commit(directory: Path, step: int, size: int = 300_000) -> Record:
    """A committed local checkpoint of step `step` (epoch 1) in `directory`, and its record."""
    directory.mkdir(parents=True, exist_ok=True)
    data = random.Random(step).randbytes(size)
    name = f"{BASE}-1_{step}.ckpt"
    (directory / name).write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    return Record(name, 1, step, step, len(data), sha, world_size=1, attempt=0, lineage="l")


class Hook(FaultPlan):
    """The fault point between the checkpoint object and meta.json, used to look, not to kill."""

    def __init__(self, action: Any) -> None:
        super().__init__("")
        self.on_point = action

    def reach(self, point: str) -> None:
        if point == "upload_before_meta":
            self.on_point()


def uploader(s: Settings, reports: list[Upload], hook: Any = None, keep: int = 2) -> Uploader:
    faults = Hook(hook) if hook is not None else FaultPlan("")
    return Uploader(
        s, rank=0, world_size=1, base=BASE, keep_max=keep, on_change=reports.append, faults=faults
    )


def steps_in_store(store: ObjectStore, bucket: str) -> list[int]:
    names = [k.rsplit("/", 1)[1] for k in listing(store.client(), bucket) if k.endswith(".ckpt")]
    return sorted(int(n.rsplit("_", 1)[1].split(".")[0]) for n in names)


def meta_steps(store: ObjectStore, bucket: str) -> list[int]:
    meta = remote_metas(store.client(), bucket).get(f"{PREFIX}/rank_0")
    return [r["step"] for r in meta["checkpoints"]] if meta else []


def wait_uploaded(store: ObjectStore, bucket: str, step: int) -> None:
    wait_for(f"step {step} in the store", lambda: meta_steps(store, bucket)[-1:] == [step], 60)


def test_the_checkpoint_goes_first_meta_json_last_and_old_steps_only_after_a_newer_meta_json(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path
) -> None:
    local = tmp_path / "rank_0"
    reports: list[Upload] = []
    seen: list[tuple[list[int], list[int]]] = []
    committed: dict[int, Record] = {}

    def between_object_and_meta() -> None:
        assert_metas_name_only_whole_objects(object_store.client(), store_bucket)
        seen.append((steps_in_store(object_store, store_bucket), meta_steps(object_store, store_bucket)))
        if len(seen) == 4:  # while step 4 goes up, steps 5 and 6 are committed and 6 pruned locally
            for step in (5, 6):
                committed[step] = commit(local, step)
                up.committed(committed[step], local / committed[step].file)
            (local / committed[6].file).unlink()  # the pruner may delete it: the open file still uploads

    up = uploader(settings(object_store, store_bucket), reports, between_object_and_meta)
    try:
        for step in (1, 2, 3, 4):
            committed[step] = commit(local, step)
            up.committed(committed[step], local / committed[step].file)
            if step < 4:
                wait_uploaded(object_store, store_bucket, step)
        wait_uploaded(object_store, store_bucket, 6)
    finally:
        assert up.close(10)
    # Each checkpoint is in the store before the meta.json that names it; step N-2 goes only once
    # step N's meta.json is in place (keep_checkpoint_max 2).
    assert seen == [([1], []), ([1, 2], [1]), ([1, 2, 3], [1, 2]), ([2, 3, 4], [2, 3]), ([3, 4, 6], [3, 4])]
    assert steps_in_store(object_store, store_bucket) == meta_steps(object_store, store_bucket) == [4, 6]
    assert reports[-1] == Upload(step=6, pending=0, lag_seconds=0.0, failures=0, error=None)
    assert max(r.pending for r in reports) >= 2  # 5 and 6 waited while 4 went up; 5 was skipped


@pytest.mark.parametrize("problem", ["credentials", "endpoint", "bucket"])
def test_a_store_that_cannot_be_used_is_reported_and_holds_nothing_up(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path, problem: str
) -> None:
    changes = {
        "credentials": {"secret_key": "wrong" + object_store.secret_key[5:]},
        "endpoint": {"endpoint": f"http://127.0.0.1:{free_port()}"},
        "bucket": {"bucket": store_bucket + "-missing"},
    }[problem]
    expected = {"credentials": "access denied", "endpoint": "cannot reach", "bucket": "does not exist"}[
        problem
    ]
    reports: list[Upload] = []
    up = uploader(settings(object_store, store_bucket, **changes), reports)
    record = commit(tmp_path, 1)
    started = time.monotonic()
    up.committed(record, tmp_path / record.file)
    assert time.monotonic() - started < 0.5  # the commit only queues
    wait_for("a failure reported", lambda: any(r.failures for r in reports), 60)
    failed = next(r for r in reports if r.failures)
    assert failed.pending == 1 and failed.step is None and expected in (failed.error or ""), failed
    started = time.monotonic()
    assert not up.close(1.0)
    assert time.monotonic() - started < 3.0
    if problem == "bucket":
        assert store_bucket + "-missing" not in [
            b["Name"] for b in object_store.client().list_buckets()["Buckets"]
        ]
    with pytest.raises(StoreError, match=expected):
        predownload(
            settings(object_store, store_bucket, **changes), output_dir=tmp_path / "out", rank=0, world_size=1
        )


def test_predownload_brings_the_newest_step_and_never_installs_a_damaged_object(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings(object_store, store_bucket)
    reports: list[Upload] = []
    up = uploader(s, reports, keep=3)
    local = tmp_path / "old" / "rank_0"
    for step in (1, 2, 3):
        record = commit(local, step)
        up.committed(record, local / record.file)
        wait_uploaded(object_store, store_bucket, step)
    assert up.close(10)
    client = object_store.client()
    key = lambda step: f"{PREFIX}/rank_0/{BASE}-1_{step}.ckpt"  # noqa: E731
    # Step 3 damaged in place (same size: only the digest tells), step 2 torn (the size tells).
    body = client.get_object(Bucket=store_bucket, Key=key(3))["Body"].read()
    client.put_object(Bucket=store_bucket, Key=key(3), Body=bytes([body[0] ^ 1]) + body[1:])
    client.put_object(Bucket=store_bucket, Key=key(2), Body=body[:1000])

    out = tmp_path / "new"
    with caplog.at_level(logging.INFO, logger="trainer_image.store"):
        assert predownload(s, output_dir=out, rank=0, world_size=1) == StepKey(1, 1)
    folder = out / "checkpoint" / "rank_0"
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{BASE}-1_1.ckpt", "meta.json"])
    meta = read_meta(folder)
    assert meta is not None and [r.step for r in meta.checkpoints] == [1] and meta.last_step == 1
    assert (folder / f"{BASE}-1_1.ckpt").read_bytes() == (local / f"{BASE}-1_1.ckpt").read_bytes()
    assert "fell back" in caplog.text and "not loaded" in caplog.text
    # Nothing newer in the store than on disk now: nothing downloaded again.
    assert predownload(s, output_dir=out, rank=0, world_size=1) is None


def test_companion_files_go_before_their_checkpoint_come_back_before_it_and_are_pruned_with_it(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path
) -> None:
    """GRPO's optimizer files: uploaded with their sha256 as metadata, pruned with their policy file,
    downloaded and checked before it; a damaged one makes the start fall back to the step before."""
    s, reports = settings(object_store, store_bucket), list[Upload]()
    companions = Companions((".optimizer",))
    assert companions.of(f"{BASE}-1_2.ckpt") == [f"{BASE}-1_2.optimizer.ckpt"]
    assert companions.owner(f"{BASE}-1_2.optimizer.ckpt") == f"{BASE}-1_2.ckpt"
    assert companions.owner(f"{BASE}-1_2.ckpt") is None
    local = tmp_path / "local" / "rank_0"
    up = Uploader(
        s, rank=0, world_size=1, base=BASE, keep_max=2, on_change=reports.append, companions=companions
    )
    try:
        for step in (1, 2, 3):
            record = commit(local, step)
            (local / companions.of(record.file)[0]).write_bytes(f"optimizer {step}".encode() * 1000)
            up.committed(record, local / record.file)
            wait_uploaded(object_store, store_bucket, step)
    finally:
        assert up.close(10)
    names = sorted(k.rsplit("/", 1)[1] for k in listing(object_store.client(), store_bucket))
    # Step 1 left with its optimizer file once step 3's meta.json was in (keep_checkpoint_max 2).
    assert names == sorted(
        [f"{BASE}-1_{n}{tag}.ckpt" for n in (2, 3) for tag in ("", ".optimizer")] + ["meta.json"]
    )
    head = object_store.client().head_object(
        Bucket=store_bucket, Key=f"{PREFIX}/rank_0/{BASE}-1_3.optimizer.ckpt"
    )
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"optimizer 3" * 1000).hexdigest()

    # Damage step 3's optimizer object: a start on an empty disk takes step 2, with its optimizer file.
    key = f"{PREFIX}/rank_0/{BASE}-1_3.optimizer.ckpt"
    object_store.client().put_object(
        Bucket=store_bucket,
        Key=key,
        Body=b"optimizer 9" * 1000,
        Metadata={"sha256": head["Metadata"]["sha256"]},
    )
    out = tmp_path / "empty"
    assert predownload(s, output_dir=out, rank=0, world_size=1, companions=companions) == StepKey(1, 2)
    rank = out / "checkpoint" / "rank_0"
    assert {p.name for p in rank.iterdir()} == {f"{BASE}-1_2.ckpt", f"{BASE}-1_2.optimizer.ckpt", "meta.json"}
    assert (rank / f"{BASE}-1_2.optimizer.ckpt").read_bytes() == b"optimizer 2" * 1000
