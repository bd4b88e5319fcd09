"""`load_checkpoint` naming a directory without rank_N/ folders, with the real trainer: a flat folder
of one rank's checkpoints (ModelArts' train_url) and a merged `unified_checkpoint/` (Checkpoint 1.0).
Both resume the full training state: every later loss is bitwise the uninterrupted run's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from respawn_protocol.contract import ExitCode
from tests.support.trainer import (
    PROCESS_TIMEOUT,
    TOTAL_STEPS,
    losses,
    step_lines,
    tiny_config,
    tree,
    write_config,
)

pytestmark = pytest.mark.slow


def train(env: dict[str, str], config: Path, **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "trainer_image", "--config", str(config)],
        env={**env, **extra},
        capture_output=True,
        timeout=PROCESS_TIMEOUT,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> Path:
    """One uninterrupted run, every checkpoint kept."""
    out = tmp_path_factory.mktemp("reference")
    config = tiny_config(out, callbacks__0__keep_checkpoint_max=100)
    proc = train(trainer_env, write_config(out.parent / f"{out.name}.yaml", config))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return out


def resumed(
    tmp_path: Path, env: dict[str, str], load_checkpoint: Path, first: int, **overrides: object
) -> str:
    """Train from `load_checkpoint` to the end; the losses from global step `first` on are the
    reference's (checked by the caller); returns the log."""
    out = tmp_path / "out"
    config = tiny_config(out, load_checkpoint=str(load_checkpoint), **overrides)
    proc = train(env, write_config(tmp_path / "run.yaml", config))
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert [r["global_step"] for r in step_lines(out)] == list(range(first, TOTAL_STEPS + 1))
    return proc.stderr.decode()


def test_a_flat_folder_resumes_from_its_newest_intact_checkpoint(
    reference: Path, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    flat = tmp_path / "train_url"
    flat.mkdir()
    for step in (4, 8, 9):
        name = f"tiny_rank_0-1_{step}.ckpt"
        shutil.copy(reference / "checkpoint" / "rank_0" / name, flat / name)
    (flat / "tiny_rank_0-1_9.ckpt").write_bytes(b"")  # the newest, torn by a crash
    before = tree(flat)
    log = resumed(tmp_path, trainer_env, flat, first=9)
    assert "flat folder" in log and "tiny_rank_0-1_8.ckpt" in log and "tiny_rank_0-1_9.ckpt is damaged" in log
    ref = losses(reference)
    assert losses(tmp_path / "out") == {g: ref[g] for g in range(9, TOTAL_STEPS + 1)}
    assert tree(flat) == before  # an input: never written to or pruned


def test_a_flat_folder_for_several_ranks_is_refused_at_once(
    reference: Path, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    flat = tmp_path / "train_url"
    flat.mkdir()
    shutil.copy(reference / "checkpoint" / "rank_0" / "tiny_rank_0-1_4.ckpt", flat)
    config = write_config(tmp_path / "run.yaml", tiny_config(tmp_path / "out", load_checkpoint=str(flat)))
    proc = train(trainer_env, config, RESPAWN_RANK="1", RESPAWN_WORLD_SIZE="2")
    assert proc.returncode == ExitCode.CONFIG_ERROR
    assert "cannot resume 2 ranks" in proc.stderr.decode()


MERGE = """\
import sys
from pathlib import Path
from respawn_protocol.layout import StepKey
from trainer_image.checkpoint.merge import unify, write_with_mindspore
from trainer_image.training.backend import read_checkpoint
out, shard = Path(sys.argv[1]), Path(sys.argv[2])
print(unify(out, StepKey(1, 6), {0: shard}, read=read_checkpoint, write=write_with_mindspore))
"""


def test_a_unified_checkpoint_directory_resumes_its_step(
    reference: Path, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    """Seed 002: `load_checkpoint: /path/to/unified_checkpoint`, as auto_trans_ckpt's merge writes it."""
    merged = tmp_path / "merged"
    (tmp_path / "merge.py").write_text(MERGE)
    shard = reference / "checkpoint" / "rank_0" / "tiny_rank_0-1_6.ckpt"
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "merge.py"), str(merged), str(shard)],
        env=trainer_env,
        capture_output=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    unified = merged / "unified_checkpoint"
    assert sorted(p.name for p in unified.iterdir()) == ["meta.json", "unified-1_6.ckpt"]
    monitors = [*tiny_config(tmp_path)["callbacks"], {"type": "MFLossMonitor", "per_print_times": 4}]
    log = resumed(tmp_path, trainer_env, unified, first=7, callbacks=monitors)
    printed = [int(line.split("step ")[1].split()[0]) for line in log.splitlines() if "(epoch " in line]
    assert printed == [8, 12, 16, 20], "MFLossMonitor's per_print_times, by global step"
    first = step_lines(tmp_path / "out")[0]["resumed_from"]
    assert first == {"file": "unified-1_6.ckpt", "step": "1_6", "global_step": 6}
    ref = losses(reference)
    assert losses(tmp_path / "out") == {g: ref[g] for g in range(7, TOTAL_STEPS + 1)}


SHARD = """\
import json, sys
from pathlib import Path
import mindspore as ms
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
params = ms.load_checkpoint(str(src))
names = sorted(k for k in params if not k.startswith("respawn."))
hyper = sorted(set(params) - set(names))
parts = {"part0.safetensors": names[::2], "part1.safetensors": names[1::2], "hyper_param.safetensors": hyper}
dst.mkdir()
for file, keys in parts.items():
    ms.save_checkpoint([{"name": k, "data": params[k]} for k in keys], str(dst / file), format="safetensors")
weight_map = {k: f for f, keys in parts.items() if f != "hyper_param.safetensors" for k in keys}
index = {"metadata": {"total_size": sum(params[k].nbytes for k in names)}, "weight_map": weight_map}
(dst / "param_name_map.json").write_text(json.dumps(index, indent=4))
"""


def test_mindspore_s_merged_safetensors_directory_resumes_its_step(
    reference: Path, tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    """The layout `mindspore.parallel.unified_safetensors` writes (MindFormers' unified_checkpoint/):
    `param_name_map.json`, `partK.safetensors`, `hyper_param.safetensors`. Made here from step 6 with
    MindSpore's own save_checkpoint (the real function needs a strategy file MindSpore cannot write
    on CPU), the index as `_save_parameter_map_json` writes it."""
    unified = tmp_path / "unified_checkpoint"
    (tmp_path / "shard.py").write_text(SHARD)
    shard = reference / "checkpoint" / "rank_0" / "tiny_rank_0-1_6.ckpt"
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "shard.py"), str(shard), str(unified)],
        env=trainer_env,
        capture_output=True,
        timeout=PROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    resumed(tmp_path, trainer_env, unified, first=7, load_ckpt_format="safetensors")
    ref = losses(reference)
    assert losses(tmp_path / "out") == {g: ref[g] for g in range(7, TOTAL_STEPS + 1)}
