"""GRPO with real MindSpore processes: runs SIGKILLed at random moments and inside saves resume with
every step's loss, reward_mean and kl bitwise those of the uninterrupted run, in both formats; the
optimizer state is a file of its own; the reference is written once and reused; the seed's
launch flags and troubleshooting messages."""

from __future__ import annotations

import random
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.contract import ExitCode
from respawn_protocol.meta import read_meta
from tests.support.grpo import exact, grpo_config, grpo_process, starts, steps
from tests.support.poll import FAST, wait_for
from tests.support.trainer import TrainerProcess, write_config

pytestmark = pytest.mark.slow

TOTAL = 12
Launch = Callable[..., TrainerProcess]


@pytest.fixture
def launch(trainer_env: dict[str, str]) -> Any:
    started: list[TrainerProcess] = []

    def _launch(config: Path, *args: str, **extra: str) -> TrainerProcess:
        log = config.with_name(f"{config.stem}-{len(started)}.log")
        p = grpo_process(config, trainer_env, log, list(args), extra)
        started.append(p)
        return p

    yield _launch
    for p in started:
        p.kill()


def finish(launch: Launch, config: Path, *args: str, **extra: str) -> TrainerProcess:
    p = launch(config, *args, **extra)
    code = p.wait()
    assert code == ExitCode.SUCCESS, p.output()[-3000:]
    return p


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> Path:
    """One uninterrupted run, every checkpoint kept."""
    out = tmp_path_factory.mktemp("grpo_reference")
    config = write_config(
        out.parent / f"{out.name}.yaml", grpo_config(out, callbacks__0__keep_checkpoint_max=100)
    )
    p = grpo_process(config, trainer_env, out.parent / f"{out.name}.log", [], {})
    assert p.wait() == ExitCode.SUCCESS, p.output()[-3000:]
    return out


def test_the_reference_run_learns_and_keeps_policy_and_optimizer_apart(reference: Path) -> None:
    import mindspore as ms

    lines = steps(reference)
    assert [r["global_step"] for r in lines] == list(range(1, TOTAL + 1))
    assert starts(reference) == [None]
    assert all(r["kl"] >= 0 for r in lines) and lines[0]["kl"] < 1e-3 < lines[-1]["kl"]
    rank = reference / "checkpoint" / "rank_0"
    meta = read_meta(rank)
    assert meta is not None and meta.last_global_step == TOTAL
    for record in meta.checkpoints:
        policy = ms.load_checkpoint(str(rank / record.file))
        optimizer = ms.load_checkpoint(str(rank / record.file.replace(".ckpt", ".optimizer.ckpt")))
        weights = {k for k in policy if not k.startswith("respawn.")}
        assert "tok_embeddings.embedding_table" in weights
        assert not weights & set(optimizer), "the optimizer file holds no policy weight"
        assert {k.split(".")[0] for k in optimizer} >= {"adam_m", "adam_v", "global_step"}
        assert int(optimizer["global_step"].asnumpy().reshape(-1)[0]) == 2 * record.global_step
    strategy = reference / "strategy" / "ckpt_strategy_rank_0.json"
    assert "adam_m.tok_embeddings.embedding_table" in strategy.read_text()


def kill_soon(launch: Launch, config: Path, out: Path, rng: random.Random) -> None:
    """SIGKILL a run a random 0-60 ms after it has logged 1-3 more steps (a save follows every step)."""
    p = launch(config)
    target = len(steps(out)) + rng.randint(1, 3)
    wait_for("steps", lambda: len(steps(out)) >= target or p.proc.poll() is not None, 240, interval=FAST)
    at = time.monotonic() + rng.uniform(0.0, 0.06)
    wait_for("the kill time", lambda: time.monotonic() >= at, 5, interval=FAST)
    assert p.proc.poll() is None, p.output()[-2000:]
    p.kill()


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_killed_runs_resume_bitwise(reference: Path, launch: Launch, tmp_path: Path, fmt: str) -> None:
    rng = random.Random(f"grpo-{fmt}")
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "run.yaml",
        grpo_config(out, load_ckpt_format=fmt, resume_training=True, callbacks__0__checkpoint_format=fmt),
    )
    # Inside a save: the optimizer file published, the policy file not yet; then the policy file
    # published, meta.json not yet updated.
    for fault in (f"before_publish:{rng.randint(2, 4)}", f"after_publish:{rng.randint(2, 3)}"):
        p = launch(config, RESPAWN_FAULT=fault)
        assert p.wait() == -signal.SIGKILL, p.output()[-2000:]
    kill_soon(launch, config, out, rng)
    ref = out / "ref" / "rank_0"
    (ref_file,) = ref.glob(f"*.{fmt}")
    written = ref_file.stat()
    kill_soon(launch, config, out, rng)
    last = finish(launch, config)

    assert exact(out) == exact(reference)
    resumed = starts(out)
    assert resumed[0] is None and len(resumed) == 5 and all(r is not None for r in resumed[1:]), resumed
    # The reference was written once, by the first start, and loaded by every later one.
    assert (ref_file.stat().st_ino, ref_file.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert "saved the initial policy as the reference" not in last.output()
    assert f"reference model from {ref_file}" in last.output()
    # Every retained step has its optimizer file; none is left without its policy file.
    rank = out / "checkpoint" / "rank_0"
    policies = {p.name for p in rank.glob(f"*.{fmt}") if ".optimizer." not in p.name}
    optimizers = {p.name.replace(f".optimizer.{fmt}", f".{fmt}") for p in rank.glob(f"*.optimizer.{fmt}")}
    assert policies == optimizers and len(policies) == 2, sorted(rank.iterdir())


def test_the_seed_launch_continues_another_directory_with_its_reference(
    reference: Path, launch: Launch, tmp_path: Path
) -> None:
    """`--resume_training --actor_checkpoint_path ... --ref_checkpoint_path ... --save_checkpoint_dir
    ... --save_strategy_dir ...` continues a run saved elsewhere, with that run's reference, into a
    new directory, exactly; nothing is written to the old one and no reference is saved anew."""
    first = saved_at_step_6(reference, tmp_path / "first")
    config = write_config(tmp_path / "run.yaml", grpo_config(tmp_path / "unused"))
    second = tmp_path / "second"
    strategy = tmp_path / "strategy"
    before = sorted(p.name for p in (first / "checkpoint" / "rank_0").iterdir())
    finish(
        launch,
        config,
        "--resume_training",
        "--actor_checkpoint_path", str(first / "checkpoint"),
        "--ref_checkpoint_path", str(first / "ref"),
        "--save_checkpoint_dir", str(second),
        "--save_strategy_dir", str(strategy),
        "--total_steps", str(TOTAL),
    )  # fmt: skip
    assert [r["global_step"] for r in steps(second)] == list(range(7, TOTAL + 1))
    assert starts(second)[0]["global_step"] == 6
    assert exact(second) == {g: v for g, v in exact(reference).items() if g > 6}
    assert not (second / "ref").exists()
    assert (strategy / "ckpt_strategy_rank_0.json").is_file()
    assert sorted(p.name for p in (first / "checkpoint" / "rank_0").iterdir()) == before


def saved_at_step_6(reference: Path, where: Path) -> Path:
    """The reference run's directory as it was after committing step 6 (its step-6 files, a
    meta.json naming them, its reference): a run saved elsewhere, without a second run to make it."""
    from respawn_protocol.meta import Meta

    rank = reference / "checkpoint" / "rank_0"
    meta = read_meta(rank)
    assert meta is not None
    (record,) = [r for r in meta.checkpoints if r.global_step == 6]
    target = where / "checkpoint" / "rank_0"
    target.mkdir(parents=True)
    for name in (record.file, record.file.replace(".ckpt", ".optimizer.ckpt")):
        shutil.copy2(rank / name, target / name)
    (target / "meta.json").write_bytes(Meta(record.epoch, record.step, record.file, 6, [record]).to_json())
    shutil.copytree(reference / "ref", where / "ref")
    return where


def test_a_missing_meta_json_says_where_it_looked(launch: Launch, tmp_path: Path) -> None:
    actor = tmp_path / "train_checkpoints"
    (actor / "rank_0").mkdir(parents=True)
    config = write_config(tmp_path / "run.yaml", grpo_config(tmp_path / "out"))
    p = launch(config, "--resume_training", "--actor_checkpoint_path", str(actor))
    assert p.wait() == ExitCode.CONFIG_ERROR
    assert f"looked for {actor / 'rank_0' / 'meta.json'}" in p.output()


def test_parameter_names_that_do_not_match_are_listed(
    reference: Path, launch: Launch, tmp_path: Path
) -> None:
    """An optimizer file given as the policy: the error names the model's parameters the file lacks
    and the file's names the model does not have."""
    (wrong,) = sorted((reference / "checkpoint" / "rank_0").glob("*-1_2.optimizer.ckpt"))
    config = write_config(tmp_path / "run.yaml", grpo_config(tmp_path / "out"))
    p = launch(config, "--actor_checkpoint_path", str(wrong))
    assert p.wait() == ExitCode.CONFIG_ERROR
    out = p.output()
    assert "does not fit the policy" in out and "tok_embeddings.embedding_table" in out
    assert "parameter name(s) [adam_m.layers.0.attention.wk.weight," in out


def test_sigterm_commits_the_current_step_and_the_restart_loses_nothing(
    reference: Path, launch: Launch, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "run.yaml",
        grpo_config(out, resume_training=True, callbacks__0__save_checkpoint_steps=1000),
    )
    p = launch(config)
    wait_for("3 steps", lambda: len(steps(out)) >= 3 or p.proc.poll() is not None, 240, interval=FAST)
    p.proc.send_signal(signal.SIGTERM)
    assert p.wait() == ExitCode.STOPPED, p.output()[-2000:]
    meta = read_meta(out / "checkpoint" / "rank_0")
    stopped = steps(out)[-1]["global_step"]
    assert meta is not None and meta.last_global_step == stopped < TOTAL
    finish(launch, config)
    assert [r["global_step"] for r in steps(out)] == list(range(1, TOTAL + 1)), "no step run twice"
    assert exact(out) == exact(reference)


def test_a_start_from_actor_weights_makes_them_the_reference(
    reference: Path, launch: Launch, tmp_path: Path
) -> None:
    """Without --resume_training the actor checkpoint gives weights only (a fresh optimizer, global
    step 0), and those weights, the initial policy, are what the first start saves as the reference."""
    import mindspore as ms

    (actor,) = sorted((reference / "checkpoint" / "rank_0").glob("*-1_6.ckpt"))
    out = tmp_path / "out"
    config = write_config(tmp_path / "run.yaml", grpo_config(out))
    finish(launch, config, "--actor_checkpoint_path", str(actor))
    assert starts(out) == [{"file": actor.name, "step": "1_6", "global_step": 0}]
    assert [r["global_step"] for r in steps(out)] == list(range(1, TOTAL + 1))
    (saved,) = (out / "ref" / "rank_0").glob("*.ckpt")
    ref, weights = ms.load_checkpoint(str(saved)), ms.load_checkpoint(str(actor))
    assert ref.keys() == {k for k in weights if not k.startswith("respawn.")}
    assert all((ref[k].asnumpy() == weights[k].asnumpy()).all() for k in ref)
    assert steps(out)[0]["kl"] < 1e-3, "the policy starts at the reference"
