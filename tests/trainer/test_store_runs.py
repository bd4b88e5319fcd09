"""Real trainer processes with a checkpoint store (a real SeaweedFS, tests/support/objectstore.py): a
SIGKILL between an uploaded checkpoint and its meta.json, then a restart that completes the store,
then a start on an empty disk that skips a damaged object; a gang evicted and restarted on empty
disks that resumes from the store bit-exactly; a store that cannot be used, reported while training
goes on unchanged."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.contract import ExitCode
from respawn_protocol.steplog import effective_steps
from tests.support.objectstore import ObjectStore, assert_metas_name_only_whole_objects, listing, remote_metas
from tests.support.poll import FAST, wait_for
from tests.support.trainer import (
    WAIT,
    WORLD,
    Launcher,
    finish,
    start_gang,
    step_lines,
    tiny_config,
    write_config,
)

pytestmark = pytest.mark.slow


def rank_losses(out: Path) -> list[dict[int, str]]:
    return [
        {g: r["loss_bits"] for g, r in effective_steps(step_lines(out, rank)).items()}
        for rank in range(WORLD)
    ]


def run_gang(launch: Launcher, path: Path, expect: int = ExitCode.SUCCESS, **env: str) -> list[Any]:
    gang = start_gang(launch, path, **env)
    finish(gang, expect)
    return gang


def test_a_sigkill_mid_upload_keeps_the_store_consistent_a_restart_completes_it_a_damaged_object_is_skipped(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    out = tmp_path / "out"
    path = write_config(tmp_path / "run.yaml", tiny_config(out, runner_config__epochs=1))
    launch = Launcher({**trainer_env, **object_store.env(store_bucket)})
    client = object_store.client()
    killed = launch(path, log_name="killed", RESPAWN_FAULT="upload_before_meta:2")
    assert killed.wait(WAIT) == -signal.SIGKILL, killed.output()[-3000:]
    # The second upload's checkpoint is in the store, the meta.json there does not name it yet.
    assert_metas_name_only_whole_objects(client, store_bucket)
    (meta,) = remote_metas(client, store_bucket).values()
    named = {f"job/rank_0/{r['file']}" for r in meta["checkpoints"]}
    orphans = {k for k in listing(client, store_bucket) if k.endswith(".ckpt")} - named
    assert len(named) == 1 and len(orphans) == 1, (named, orphans)

    restarted = launch(path, log_name="restarted")
    assert restarted.wait(WAIT) == ExitCode.SUCCESS, restarted.output()[-3000:]
    assert_metas_name_only_whole_objects(client, store_bucket)
    (meta,) = remote_metas(client, store_bucket).values()
    assert meta["last_global_step"] == 10  # the last step, flushed at the exit
    # At most three steps (keep_checkpoint_max; fewer when the store fell behind the saves and took
    # the newest commit), all named: the orphan was pruned, or named again by its re-upload, once a
    # newer meta.json was in.
    named = {f"job/rank_0/{r['file']}" for r in meta["checkpoints"]}
    assert {k for k in listing(client, store_bucket) if k.endswith(".ckpt")} == named
    assert 2 <= len(named) <= 3, named

    # The newest object damaged in the store (same size: only its sha256 tells): a start on an empty
    # disk never loads it and resumes from the step before in the store, recomputing the steps after
    # it bit-exactly.
    newest = f"job/rank_0/{meta['last_ckpt_file']}"
    body = client.get_object(Bucket=store_bucket, Key=newest)["Body"].read()
    client.put_object(Bucket=store_bucket, Key=newest, Body=body[:-1] + bytes([body[-1] ^ 1]))
    fresh = tmp_path / "fresh"
    path = write_config(tmp_path / "fresh.yaml", tiny_config(fresh, runner_config__epochs=1))
    damaged = launch(path, log_name="damaged")
    assert damaged.wait(WAIT) == ExitCode.SUCCESS, damaged.output()[-3000:]
    assert "store: fell back" in damaged.output() and "not loaded" in damaged.output()
    before = meta["checkpoints"][-2]["global_step"]
    first = step_lines(fresh)[0]
    assert first["resumed_from"]["global_step"] == before and first["global_step"] == before + 1
    assert first["loss_bits"] == effective_steps(step_lines(out))[before + 1]["loss_bits"]


def test_a_gang_evicted_and_restarted_on_empty_disks_resumes_from_the_store_bit_exactly(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    def config(out: Path) -> Path:
        return write_config(tmp_path / f"{out.name}.yaml", tiny_config(out, use_parallel=True))

    # The reference, uninterrupted, with a store whose credentials are wrong: reported, nothing else.
    reference = tmp_path / "reference"
    wrong = {**object_store.env(store_bucket, "ref"), "AWS_SECRET_ACCESS_KEY": "wrong"}
    gang = run_gang(Launcher({**trainer_env, **wrong}), config(reference))
    for p in gang:
        assert "store: no predownload" in p.output() and "access denied" in p.output(), p.output()[-3000:]
        assert "store: upload of" in p.output()
    assert not listing(object_store.client(), store_bucket)

    # Evicted: SIGTERM to one rank; the gang commits the same step, uploads it within the bound, exits.
    first = tmp_path / "first"
    launch = Launcher({**trainer_env, **object_store.env(store_bucket)})
    gang = start_gang(launch, config(first))
    try:
        wait_for("the gang to train", lambda: len(step_lines(first, 1)) >= 3, WAIT, interval=FAST)
        gang[1].proc.send_signal(signal.SIGTERM)
        for p in gang:
            assert p.wait(WAIT) == ExitCode.STOPPED, p.output()[-3000:]
    finally:
        for p in gang:
            p.kill()
    stopped_at = step_lines(first, 0)[-1]["global_step"]
    metas = remote_metas(object_store.client(), store_bucket)
    assert [metas[f"job/rank_{r}"]["last_global_step"] for r in range(WORLD)] == [stopped_at] * WORLD

    # Restarted on new nodes: empty output directories, the store the only state.
    second = tmp_path / "second"
    gang = run_gang(launch, config(second))
    resumed = [step_lines(second, rank)[0]["resumed_from"] for rank in range(WORLD)]
    assert [r["global_step"] for r in resumed] == [stopped_at] * WORLD, resumed
    assert all("store: downloaded" in p.output() for p in gang)
    combined = [{**a, **b} for a, b in zip(rank_losses(first), rank_losses(second), strict=True)]
    assert combined == rank_losses(reference)
    assert_metas_name_only_whole_objects(object_store.client(), store_bucket)


def test_a_gang_of_another_size_brings_every_old_ranks_file_from_the_store_and_merges_them(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    """auto_trans_ckpt from the store: a 2-rank gang stops; one rank on an empty disk downloads both
    old ranks' files of the step (its share: old rank r goes to rank r mod 1) with the old gang's
    strategy files, merges them and continues from the step."""

    def config(out: Path, batch: int) -> Path:  # the same global batch: 2 x 4 = 1 x 8
        settings = {"use_parallel": True, "auto_trans_ckpt": True, "runner_config__batch_size": batch}
        return write_config(tmp_path / f"{out.name}.yaml", tiny_config(out, **settings))

    launch = Launcher({**trainer_env, **object_store.env(store_bucket)})
    first = tmp_path / "first"
    gang = start_gang(launch, config(first, 4))
    try:
        wait_for("the gang to train", lambda: len(step_lines(first, 1)) >= 3, WAIT, interval=FAST)
        gang[1].proc.send_signal(signal.SIGTERM)
    finally:
        finish(gang, ExitCode.STOPPED)
    stopped_at = step_lines(first, 0)[-1]["global_step"]
    keys = set(listing(object_store.client(), store_bucket))
    assert {f"job/strategy/2/ckpt_strategy_rank_{r}.json" for r in range(WORLD)} <= keys, sorted(keys)

    second = tmp_path / "second"
    single = launch(config(second, 8), log_name="single", RESPAWN_RANK="0", RESPAWN_WORLD_SIZE="1")
    finish([single])
    downloaded = [line for line in single.output().splitlines() if "store: downloaded" in line]
    assert len(downloaded) == 2 and all(f"(global step {stopped_at})" in line for line in downloaded)
    resumed = step_lines(second, 0)[0]["resumed_from"]
    assert (resumed["global_step"], resumed["world_size"]) == (stopped_at, 2), resumed
    # The old gang's strategy files stay in the store, apart from any a later gang sends.
    assert {f"job/strategy/2/ckpt_strategy_rank_{r}.json" for r in range(WORLD)} <= set(
        listing(object_store.client(), store_bucket)
    )
