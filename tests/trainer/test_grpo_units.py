"""GRPO without MindSpore: the task's reward and prompt order, sampling and advantages, the config
and the command line, and the HCCL timeouts of a TrainingJob's template reaching every rank."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from controller.api.types import parse_job
from controller.core.podspec import worker_pod
from tests.support import REPO
from trainer_image.config import ConfigError
from trainer_image.grpo.__main__ import cli_overrides, job_checkpoint_dir, main, parse_args
from trainer_image.grpo.algo import group_advantages, sample, sampling_rng
from trainer_image.grpo.config import build_grpo_config, grpo_env_overrides, parse_grpo_config
from trainer_image.grpo.task import SumTask, prompt_indices

TASK = SumTask(operand_max=19, completion_length=3)


def test_the_reward_gives_full_credit_for_the_answer_and_partial_credit_for_its_form() -> None:
    pairs = np.array([[7, 12], [7, 12], [7, 12], [0, 3]])
    assert bytes(TASK.prompt_bytes(pairs[:1])[0]) == b"07+12="
    targets = TASK.targets(pairs)
    assert bytes(targets[0]) == b"19;" and bytes(targets[3]) == b"03;"
    completions = np.frombuffer(b"19;" + b"28;" + b"ab!" + b"03;", dtype=np.uint8).reshape(4, 3)
    rewards = TASK.rewards(completions, targets)
    assert rewards.dtype == np.float32
    assert rewards.tolist() == [1.0, pytest.approx(0.5), 0.0, 1.0]


def test_prompt_order_is_a_function_of_the_seed_and_iteration_and_ranks_take_disjoint_prompts() -> None:
    def take(iteration: int, rank: int, seed: int = 3) -> list[int]:
        return prompt_indices(
            TASK, seed=seed, iteration=iteration, batch=8, offset=4 * rank, count=4
        ).tolist()

    assert take(5, 0) == take(5, 0)
    assert take(5, 0) != take(5, 0, seed=4)
    assert not set(take(5, 0)) & set(take(5, 1))
    per_epoch = TASK.size // 8
    epoch = [i for t in range(per_epoch) for r in (0, 1) for i in take(t, r)]
    assert len(set(epoch)) == len(epoch) == per_epoch * 8, "an epoch visits each prompt at most once"
    assert take(per_epoch, 0) != take(0, 0), "the next epoch is another permutation"


def test_sampling_is_keyed_on_seed_step_and_rank_and_follows_the_softmax() -> None:
    assert (sampling_rng(1, 7, 0).random(4) == sampling_rng(1, 7, 0).random(4)).all()
    assert (sampling_rng(1, 7, 0).random(4) != sampling_rng(1, 7, 1).random(4)).all()
    logits = np.log(np.array([[0.5, 0.25, 0.25]] * 4, dtype=np.float32))
    picks = sample(logits, np.array([0.1, 0.6, 0.8, 0.999999]), 1.0)
    assert picks.tolist() == [0, 1, 2, 2]
    hot = sample(logits[:1], np.array([0.6]), 1e-3)  # near zero temperature: the argmax
    assert hot.tolist() == [0]


def test_advantages_are_normalised_within_each_group() -> None:
    rewards = np.array([1, 0, 0, 0, 0.5, 0.5, 0.5, 0.5], dtype=np.float32)
    adv = group_advantages(rewards, 4)
    assert adv.dtype == np.float32
    assert abs(float(adv[:4].sum())) < 1e-5 and adv[0] > 0 > adv[1]
    assert adv[4:].tolist() == [0.0] * 4, "a group with one reward carries no signal"


def test_the_shipped_config_parses_and_unknown_or_wrong_keys_are_named(tmp_path: Path) -> None:
    config = build_grpo_config(REPO / "trainer_image" / "configs" / "grpo_tiny.yaml")
    assert config.grpo.num_generations == 8 and config.checkpoint_monitor is not None
    assert (
        config.save_dir == Path("./output/grpo_tiny") and config.strategy_dir == config.save_dir / "strategy"
    )
    with pytest.raises(ConfigError, match=r"grpo\.num_generation: unknown key"):
        parse_grpo_config({"grpo": {"num_generation": 4}})
    with pytest.raises(ConfigError, match=r"grpo\.beta: expected float, got str"):
        parse_grpo_config({"grpo": {"beta": "high"}})
    with pytest.raises(ConfigError, match=r"model\.seq_length"):
        parse_grpo_config({"model": {"seq_length": 8}})
    with pytest.raises(ConfigError, match="async_save"):
        parse_grpo_config({"callbacks": [{"type": "CheckpointMonitor", "async_save": True}]})


def test_flags_beat_the_environment_which_beats_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"output_dir": "/yaml", "seed": 1}))
    args = parse_args(
        [
            "--config",
            str(path),
            "--resume_training",
            "--actor_checkpoint_path",
            "/a",
            "--save_checkpoint_dir",
            "/s",
        ]
    )
    env = {
        "RESPAWN_OUTPUT_DIR": "/job",
        "RESPAWN_LOAD_CHECKPOINT": "/weights",
        "RESPAWN_RESUME_TRAINING": "false",
    }
    config = build_grpo_config(path, grpo_env_overrides(env), cli_overrides(args))
    assert (config.output_dir, config.actor_checkpoint_path, config.resume_training) == ("/job", "/a", True)
    assert config.save_dir == Path("/s") and config.strategy_dir == Path("/s/strategy")
    assert parse_args(["--config", "c", "--resume_training", "false"]).resume_training is False
    assert parse_args(["--config", "c"]).resume_training is None
    with pytest.raises(ConfigError, match="true or false"):
        grpo_env_overrides({"RESPAWN_RESUME_TRAINING": "grpo_rank_0-1_5.ckpt"})


def test_auto_resume_looks_in_the_save_directory_only_under_the_controller_or_when_asked() -> None:
    save = Path("/mnt/shared/ns/job")
    env = {"RESPAWN_JOB_CHECKPOINT_DIR": "/mnt/shared/ns/job/checkpoint"}
    assert job_checkpoint_dir(env, save, resume=False) == save / "checkpoint"
    assert job_checkpoint_dir({}, save, resume=True) == save / "checkpoint"
    assert job_checkpoint_dir({}, save, resume=False) is None
    with pytest.raises(ConfigError, match="not where this run writes its checkpoints"):
        job_checkpoint_dir(env, Path("/elsewhere"), resume=False)


def test_hccl_timeouts_in_the_samples_template_reach_every_rank() -> None:
    """The seed's fix for distributed timeouts: set in the TrainingJob's template, every worker pod
    of every attempt carries them next to what the controller injects."""
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "samples" / "grpo.yaml").read_text()) if d]
    (body,) = [d for d in docs if d["kind"] == "TrainingJob"]
    job = parse_job({**body, "metadata": {**body["metadata"], "namespace": "team", "uid": "u"}})
    replicas = body["spec"]["replicas"]
    for attempt in (0, 1):
        for rank in range(replicas):
            pod = worker_pod(job, attempt=attempt, rank=rank, replicas=replicas)
            env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
            assert (env["HCCL_CONNECT_TIMEOUT"], env["HCCL_EXEC_TIMEOUT"]) == ("2400", "7200")
            assert env["RESPAWN_RANK"] == str(rank)


def test_several_ranks_per_pod_go_through_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """With RESPAWN_RANKS_PER_POD > 1 the GRPO entry point is the pod's supervisor, as the pretraining
    one is: ranks beyond the world size are refused before any starts."""
    ranks = {"RESPAWN_RANKS_PER_POD": "2", "RESPAWN_RANK": "0", "RESPAWN_WORLD_SIZE": "1", "GLOG_v": "3"}
    for name, value in ranks.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("os.umask", lambda mask: 0)
    monkeypatch.setattr("signal.signal", lambda *a: None)
    config = str(REPO / "trainer_image" / "configs" / "grpo_tiny.yaml")
    assert main(["--config", config]) == 78


class FakeBackend:
    """Writes and loads 'weights' as bytes, counting what the reference code asks of it."""

    def __init__(self, weights: bytes = b"initial policy") -> None:
        self.weights = weights
        self.saved = 0
        self.loaded: list[Path] = []

    def save_policy_weights(self, path: Path, fmt: str) -> None:
        self.saved += 1
        path.write_bytes(self.weights)

    def load_reference(self, path: Path) -> None:
        self.loaded.append(path)


def test_the_reference_is_saved_once_then_only_loaded_and_never_replaced(tmp_path: Path) -> None:
    from trainer_image.grpo.reference import prepare_reference

    def prepare(backend: FakeBackend, *, fresh: bool) -> Path:
        return prepare_reference(
            backend, save_dir=tmp_path, rank=1, fmt="ckpt", ref_checkpoint_path="", fresh=fresh
        )

    first = FakeBackend()
    path = prepare(first, fresh=True)
    assert path == tmp_path / "ref" / "rank_1" / "ref_rank_1-0_0.ckpt" and first.saved == 1
    assert first.loaded == [path] and (path.parent / "meta.json").is_file()
    later = FakeBackend(b"trained policy")
    assert prepare(later, fresh=True) == path and later.saved == 0 and path.read_bytes() == b"initial policy"
    path.write_bytes(b"initial polic!")  # same size, other bytes: the recorded sha256 tells
    with pytest.raises(ConfigError, match="never written again"):
        prepare(FakeBackend(), fresh=True)
    assert path.read_bytes() == b"initial polic!", "a damaged reference is not replaced"


def test_a_resumed_start_without_a_reference_is_refused_and_a_named_one_must_exist(tmp_path: Path) -> None:
    from trainer_image.grpo.reference import prepare_reference

    with pytest.raises(ConfigError, match=r"ref/rank_0/meta\.json does not exist"):
        prepare_reference(
            FakeBackend(), save_dir=tmp_path, rank=0, fmt="ckpt", ref_checkpoint_path="", fresh=False
        )
    empty = tmp_path / "refs"
    (empty / "rank_0").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"looked for .*refs/rank_0/meta\.json"):
        prepare_reference(
            FakeBackend(), save_dir=tmp_path, rank=0, fmt="ckpt", ref_checkpoint_path=str(empty), fresh=True
        )


def test_optimizer_files_without_their_policy_file_are_removed(tmp_path: Path) -> None:
    from trainer_image.grpo.saving import optimizer_path, remove_orphan_optimizer_files

    kept = tmp_path / "grpo_rank_0-1_4.safetensors"
    orphan = optimizer_path(tmp_path / "grpo_rank_0-1_5.safetensors")
    assert orphan.name == "grpo_rank_0-1_5.optimizer.safetensors"
    for path in (kept, optimizer_path(kept), orphan, tmp_path / "meta.json"):
        path.write_bytes(b"x")
    assert remove_orphan_optimizer_files(tmp_path) == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "grpo_rank_0-1_4.optimizer.safetensors",
        "grpo_rank_0-1_4.safetensors",
        "meta.json",
    ]


def test_the_controllers_checkpoint_interval_replaces_the_monitors() -> None:
    from trainer_image.grpo.config import with_save_interval

    config = build_grpo_config(REPO / "trainer_image" / "configs" / "grpo_tiny.yaml")
    assert config.checkpoint_monitor is not None and config.checkpoint_monitor.save_checkpoint_steps == 5
    changed = with_save_interval(config, 7).checkpoint_monitor
    assert changed is not None and changed.save_checkpoint_steps == 7
    assert with_save_interval(config, None) is config
