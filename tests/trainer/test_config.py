"""Config parsing, precedence of settings, and the controller contract."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from respawn_protocol import contract
from respawn_protocol.contract import ExitClass, ExitCode, classify_exit
from tests.support import REPO
from tests.support.trainer import tiny_config
from trainer_image.config import CheckpointMonitor, ConfigError, LossMonitor, parse_config
from trainer_image.trainer import Trainer, TrainingArguments, build_config, env_overrides


def test_full_tiny_config_parses(tmp_path: Path) -> None:
    c = parse_config(tiny_config(tmp_path))
    assert c.runner_config.batch_size == 8
    assert isinstance(c.callbacks[0], CheckpointMonitor)
    assert c.checkpoint_monitor is not None and c.checkpoint_monitor.keep_checkpoint_max == 3
    assert c.model.dropout == 0.1


def test_shipped_configs_parse() -> None:
    from trainer_image.grpo.config import build_grpo_config

    for path in (REPO / "trainer_image" / "configs").glob("*.yaml"):
        (build_grpo_config if path.name.startswith("grpo_") else build_config)(path)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"runner_config": {"batch_size": "8"}}, "runner_config.batch_size: expected int, got str"),
        ({"runner_config": {"batchsize": 8}}, "runner_config.batchsize: unknown key"),
        ({"learning_rate": 0.1}, "learning_rate: unknown key"),
        ({"seed": True}, "seed: expected int, got bool"),
        ({"resume_training": 3}, "resume_training: expected bool or str, got int"),
        ({"load_ckpt_format": "pt"}, "load_ckpt_format: expected one of 'ckpt' | 'safetensors', got 'pt'"),
        ({"callbacks": [{"type": "Nope"}]}, "callbacks[0].type: unknown callback 'Nope'"),
        ({"callbacks": [{"type": "CheckpointMonitor", "prefx": "a"}]}, "callbacks[0].prefx: unknown key"),
        (
            {"callbacks": [{"type": "CheckpointMonitor", "async_save": "yes"}]},
            "callbacks[0].async_save: expected bool",
        ),
        (
            {"callbacks": [{"type": "CheckpointMonitor", "prefix": "a-b"}]},
            "callbacks[0].prefix: only letters",
        ),
        ({"model": {"hidden_size": 30, "num_heads": 4}}, "model.hidden_size: must be num_heads"),
        ({"model": []}, "model: expected a mapping, got list"),
        ({"optimizer": {"betas": [0.9, "x"]}}, "optimizer.betas[1]: expected float, got str"),
        (
            {"resume_training": "../other/x.ckpt"},
            "resume_training: must be true/false or a bare checkpoint file name",
        ),
        ({"resume_training": ".."}, "resume_training: must be true/false"),
        (
            {"train_dataset": {"data_loader": {"dataset_dir": 5}}},
            "train_dataset.data_loader.dataset_dir: expected str",
        ),
        ({"runner_config": {"epochs": 0}}, "runner_config.epochs: must be >= 1"),
        (
            {"callbacks": [{"type": "CheckpointMonitor", "keep_checkpoint_max": 10_001}]},
            "callbacks[0].keep_checkpoint_max: at most 10000",
        ),
        # MindFormers keys accepted only with the values the trainer honours (none is ignored).
        ({"runner_config": {"sink_mode": True}}, "runner_config.sink_mode: True is not supported"),
        ({"transform_process_num": 8}, "transform_process_num: 8 is not supported"),
        ({"transform_process_num": "8"}, "transform_process_num: expected int or null, got str"),
        ({"load_ckpt_async": True}, "load_ckpt_async: True is not supported"),
        ({"callbacks": [{"type": "MFLossMonitor", "per_print_times": 0}]}, "per_print_times: must be >= 1"),
    ],
)
def test_rejects_with_the_key_named(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(raw)


def test_the_honoured_values_of_mindformers_keys_parse_and_round_trip() -> None:
    raw = {
        "runner_config": {"sink_mode": False, "sink_size": 2},
        "transform_process_num": None,
        "load_ckpt_async": False,
    }
    c = parse_config(raw)
    assert c.transform_process_num is None and build_config(c) == c
    assert parse_config({"transform_process_num": 1}).transform_process_num == 1


def test_ints_are_accepted_for_floats_and_both_callback_types() -> None:
    c = parse_config({"lr_schedule": {"learning_rate": 1}, "callbacks": [{"type": "MFLossMonitor"}]})
    assert c.lr_schedule.learning_rate == 1.0 and isinstance(c.lr_schedule.learning_rate, float)
    assert isinstance(c.callbacks[0], LossMonitor)
    assert c.checkpoint_monitor is None


def test_precedence_is_arguments_over_environment_over_yaml(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "yaml")
    env = {
        contract.OUTPUT_DIR: str(tmp_path / "env"),
        contract.LOAD_CHECKPOINT: str(tmp_path / "env-ckpt"),
        contract.RESUME_TRAINING: "false",
        contract.RANK: "1",
        contract.WORLD_SIZE: "2",
    }
    t = Trainer(config, TrainingArguments(output_dir=str(tmp_path / "args")), environ=env)
    assert t.config.output_dir == str(tmp_path / "args")
    assert t.config.load_checkpoint == str(tmp_path / "env-ckpt")
    assert t.config.resume_training is False
    assert (t.rank, t.world_size) == (1, 2)
    assert t.attempt is None
    assert Trainer(config, environ={**env, contract.ATTEMPT: "4"}).attempt == 4
    with pytest.raises(ConfigError, match="RESPAWN_ATTEMPT=-1 is negative"):
        Trainer(config, environ={**env, contract.ATTEMPT: "-1"})


def test_the_controller_s_auto_interval_replaces_save_checkpoint_steps(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    configured = Trainer(config, environ={}).config.checkpoint_monitor
    assert configured is not None
    auto = Trainer(config, environ={contract.SAVE_CHECKPOINT_STEPS: "37"}).config.checkpoint_monitor
    assert auto is not None and auto.save_checkpoint_steps == 37 != configured.save_checkpoint_steps
    assert auto.prefix == configured.prefix, "only the interval changes"
    for bad in ("0", "ten"):
        with pytest.raises(ConfigError, match="RESPAWN_SAVE_CHECKPOINT_STEPS"):
            Trainer(config, environ={contract.SAVE_CHECKPOINT_STEPS: bad})
    without = Trainer({}, environ={contract.SAVE_CHECKPOINT_STEPS: "5"}).config
    assert without.checkpoint_monitor is None, "no monitor: nothing to save, nothing added"


def test_environment_resume_training_values() -> None:
    assert env_overrides({contract.RESUME_TRAINING: "True"}) == {"resume_training": True}
    assert env_overrides({contract.RESUME_TRAINING: "a_rank_0-1_2.ckpt"}) == {
        "resume_training": "a_rank_0-1_2.ckpt"
    }
    with pytest.raises(ConfigError, match="RESPAWN_RANK=2 does not fit"):
        Trainer({}, environ={contract.RANK: "2", contract.WORLD_SIZE: "2"})


def test_exit_code_contract() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 75, 143, 78, 74]
    assert classify_exit(0) is ExitClass.SUCCEEDED
    assert classify_exit(75) is ExitClass.STOPPED
    assert classify_exit(78) is ExitClass.PERMANENT
    assert classify_exit(74) is ExitClass.INFRASTRUCTURE
    for code in (1, 2, 137, 143, 255):
        assert classify_exit(code) is ExitClass.RETRYABLE


def test_controller_and_cli_load_neither_the_trainer_nor_mindspore() -> None:
    code = (
        "import sys, trainer_image, controller.app, respawn_cli.status, respawn_protocol.resolve, "
        "respawn_protocol.steplog; "
        "loaded = {m.split('.')[0] for m in sys.modules}; "
        "assert not loaded & {'mindspore', 'numpy'}, sorted(loaded); "
        "assert [m for m in sys.modules if m.startswith('trainer_image.')] == [], sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
