"""GRPO with a checkpoint store (a real SeaweedFS): a run SIGKILLed once its steps are in the store,
restarted on an empty disk, brings back the newest step with its optimizer file and the reference
the job began with, and continues with every step's loss, reward and kl bitwise those of the
uninterrupted run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from respawn_protocol.contract import ExitCode
from tests.support.grpo import exact, grpo_config, grpo_process, starts, steps
from tests.support.objectstore import ObjectStore, assert_metas_name_only_whole_objects, listing, remote_metas
from tests.support.poll import FAST, wait_for
from tests.support.trainer import TrainerProcess, write_config

pytestmark = pytest.mark.slow


def test_a_grpo_run_restarted_on_an_empty_disk_resumes_from_the_store_bitwise(
    object_store: ObjectStore, store_bucket: str, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    def run(out: Path, env: dict[str, str]) -> TrainerProcess:
        config = write_config(tmp_path / f"{out.name}.yaml", grpo_config(out, resume_training=True))
        return grpo_process(config, env, tmp_path / f"{out.name}.log", [], {})

    reference = tmp_path / "reference"
    p = run(reference, trainer_env)
    assert p.wait() == ExitCode.SUCCESS, p.output()[-3000:]

    env = {**trainer_env, **object_store.env(store_bucket)}
    first = tmp_path / "first"
    p = run(first, env)
    s3 = object_store.client()

    def stored_step() -> int:
        meta = remote_metas(s3, store_bucket).get("job/rank_0")
        return meta["last_global_step"] if meta else 0

    wait_for(
        "four steps in the store", lambda: stored_step() >= 4 or p.proc.poll() is not None, 300, interval=FAST
    )
    p.proc.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL, p.output()[-3000:]
    assert_metas_name_only_whole_objects(s3, store_bucket)
    stored = stored_step()
    keys = set(listing(s3, store_bucket))
    policies = {
        k for k in keys if k.startswith("job/rank_0/") and k.endswith(".ckpt") and ".optimizer." not in k
    }
    assert {k.replace(".ckpt", ".optimizer.ckpt") for k in policies} <= keys, sorted(keys)
    assert "job/ref/rank_0/ref_rank_0-0_0.ckpt" in keys and "job/ref/rank_0/meta.json" in keys

    second = tmp_path / "second"  # a new node: nothing on its disk
    p = run(second, env)
    assert p.wait() == ExitCode.SUCCESS, p.output()[-3000:]
    log = p.output()
    assert "store: downloaded ref_rank_0-0_0.ckpt" in log and "saved the initial policy" not in log
    assert (second / "checkpoint" / "rank_0").is_dir() and (second / "ref" / "rank_0").is_dir()
    (resumed,) = starts(second)
    assert resumed is not None and resumed["global_step"] == stored, (resumed, stored)
    assert steps(second)[0]["global_step"] == stored + 1
    assert {**exact(first), **exact(second)} == exact(reference)
