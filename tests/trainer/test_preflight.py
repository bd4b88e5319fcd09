"""Pre-flight checks (trainer_image/training/preflight.py): units with fakes, then real trainer
processes failing a check with exit 74 and the check named in the termination log."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from respawn_protocol.contract import (
    ExitClass,
    ExitCode,
    PreflightCheck,
    classify_exit,
    preflight_check,
    preflight_message,
)
from respawn_protocol.meta import Meta, Record
from tests.support.trainer import PROCESS_TIMEOUT, controller_env, tiny_config, write_config
from trainer_image.config import ConfigError
from trainer_image.training import preflight
from trainer_image.training.preflight import PreflightError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def check(out: Path, *, rank: int, attempt: int | None = 1, **environ: str) -> None:
    clock = FakeClock()
    env = {"RESPAWN_PREFLIGHT_TIMEOUT": "5", **environ}
    preflight.check_directory(
        out, rank=rank, world_size=2, attempt=attempt, environ=env, clock=clock, sleep=clock.sleep
    )


def test_the_message_names_the_check_and_the_protocol_reads_it_back() -> None:
    assert classify_exit(ExitCode.PREFLIGHT_FAILED) is ExitClass.INFRASTRUCTURE
    for c in PreflightCheck:
        assert preflight_check(preflight_message(c, "why") + "\nmore") is c
    assert preflight_check("rank 1 exited with code 74") is None
    assert preflight_check("pre-flight check bogus failed: x") is None
    assert [c.on_node for c in PreflightCheck] == [True, True, False, False]


def test_rank_0_s_probe_lets_the_others_through_and_leaves_no_writability_file(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("kept")
    (tmp_path / ".respawn-preflight-rank_1").symlink_to(tmp_path / "elsewhere")  # left by anyone
    check(tmp_path, rank=0)
    check(tmp_path, rank=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [preflight.PROBE, "elsewhere"]
    assert (tmp_path / "elsewhere").read_text() == "kept", "a link is replaced, never followed"
    probe = json.loads((tmp_path / preflight.PROBE).read_text())
    assert (probe["attempt"], probe["world_size"]) == (1, 2)


def test_a_stale_or_missing_probe_fails_the_shared_check_after_the_timeout(tmp_path: Path) -> None:
    with pytest.raises(PreflightError) as missing:
        check(tmp_path, rank=1)
    assert missing.value.check is PreflightCheck.SHARED and "none there" in str(missing.value)
    check(tmp_path, rank=0, attempt=0)  # the previous attempt's rank 0
    with pytest.raises(PreflightError) as stale:
        check(tmp_path, rank=1, attempt=1)
    assert "found attempt 0's" in str(stale.value) and "within 5 s" in str(stale.value)
    check(tmp_path, rank=1, attempt=None)  # outside the controller: no attempt to match, skipped
    with pytest.raises(PreflightError) as with_store:
        check(tmp_path, rank=1, attempt=2, RESPAWN_STORE_ENDPOINT="http://s3:8333")
    assert "replaces a shared output directory only for a data-parallel gang" in str(with_store.value)
    assert "checkpointStore" not in str(stale.value)


def test_a_data_parallel_gang_with_a_store_asks_once_the_gang_has_met(tmp_path: Path) -> None:
    """Deferred: rank 1 does not wait for a probe (none is there, no clock passes), and `sees_probe`
    answers at once, for this attempt's probe only."""
    clock = FakeClock()
    preflight.check_directory(
        tmp_path,
        rank=1,
        world_size=2,
        attempt=4,
        environ={},
        clock=clock,
        sleep=clock.sleep,
        defer_shared=True,
    )
    assert clock.now == 0.0
    assert not preflight.sees_probe(tmp_path, attempt=4, world_size=2)
    check(tmp_path, rank=0, attempt=4)
    assert preflight.sees_probe(tmp_path, attempt=4, world_size=2)
    assert not preflight.sees_probe(tmp_path, attempt=5, world_size=2)
    assert not preflight.sees_probe(tmp_path, attempt=4, world_size=3)


def test_output_dir_outside_shared_paths_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    check(tmp_path / "shared" / "job", rank=0, SHARED_PATHS=f"/nonexistent,{tmp_path / 'shared'}")
    with pytest.raises(ConfigError, match="is not under SHARED_PATHS"):
        check(tmp_path / "local", rank=0, SHARED_PATHS=str(tmp_path / "shared"))


def test_an_unwritable_directory_fails_the_writable_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def read_only(path: object, flags: int, *args: object) -> int:
        if str(path).endswith(".respawn-preflight-rank_0"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(PreflightError) as e:
        check(tmp_path, rank=0)
    assert e.value.check is PreflightCheck.WRITABLE and "Read-only file system" in str(e.value)
    assert not (tmp_path / preflight.PROBE).exists()


def test_free_space_needs_two_checkpoints_of_every_rank(tmp_path: Path) -> None:
    env: dict[str, str] = {}
    preflight.check_space(tmp_path, per_rank=100, ranks=2, environ=env, free=lambda _: 400)
    with pytest.raises(PreflightError) as e:
        preflight.check_space(tmp_path, per_rank=100, ranks=2, environ=env, free=lambda _: 399)
    assert e.value.check is PreflightCheck.FREE_SPACE
    off = {"RESPAWN_PREFLIGHT_CHECKPOINTS": "0"}
    preflight.check_space(tmp_path, per_rank=100, ranks=2, environ=off, free=lambda _: 0)
    for bad in ({"RESPAWN_PREFLIGHT_CHECKPOINTS": "-1"}, {"RESPAWN_PREFLIGHT_TIMEOUT": "soon"}):
        with pytest.raises(ConfigError, match="RESPAWN_PREFLIGHT"):
            preflight.check_space(tmp_path, per_rank=1, ranks=1, environ=bad, free=lambda _: 10)


def test_the_estimate_is_at_least_the_last_committed_checkpoint(tmp_path: Path) -> None:
    assert preflight.checkpoint_bytes(1000, tmp_path, 0) == 1000  # nothing committed yet
    rank0 = tmp_path / "checkpoint" / "rank_0"
    rank0.mkdir(parents=True)
    net = tmp_path / "checkpoint_network" / "rank_0"
    net.mkdir(parents=True)
    (net / "a_rank_0-network-1_2.ckpt").write_bytes(b"x" * 700)
    record = Record("a_rank_0-1_2.ckpt", 1, 2, 2, 5000, "0" * 64, network_file="a_rank_0-network-1_2.ckpt")
    (rank0 / "meta.json").write_bytes(Meta(1, 2, record.file, 2, [record]).to_json())
    assert preflight.checkpoint_bytes(1000, tmp_path, 0) == 5700
    assert preflight.checkpoint_bytes(9000, tmp_path, 0) == 9000


# ------------------------------------------------------------------------- real trainer processes


def run_trainer(
    trainer_env: dict[str, str], config: Path, env: dict[str, str], termination_log: Path
) -> subprocess.CompletedProcess[bytes]:
    termination_log.write_text("")  # the kubelet's file exists; the trainer never creates it
    return subprocess.run(
        [sys.executable, "-m", "trainer_image", "--config", str(config)],
        env={**trainer_env, **env, "RESPAWN_TERMINATION_LOG": str(termination_log)},
        capture_output=True,
        timeout=PROCESS_TIMEOUT,
    )


@pytest.mark.slow
def test_a_rank_that_does_not_see_rank_0_s_directory_exits_74_naming_the_check(
    tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    """Rank 1 of a 2-rank job whose directory rank 0 never wrote to (its own local disk): it waits
    out the timeout and fails before importing MindSpore, having written nothing but the probe."""
    out = tmp_path / "job"
    config = write_config(tmp_path / "run.yaml", tiny_config(out))
    env = {**controller_env(out, attempt=3, rank=1, replicas=2), "RESPAWN_PREFLIGHT_TIMEOUT": "2"}
    said = tmp_path / "termination-log"
    proc = run_trainer(trainer_env, config, env, said)
    assert proc.returncode == ExitCode.PREFLIGHT_FAILED, proc.stderr.decode()[-2000:]
    assert preflight_check(said.read_text()) is PreflightCheck.SHARED
    assert "no probe of attempt 3 from rank 0" in said.read_text()
    assert sorted(p.name for p in out.iterdir()) == []  # the writability probe was removed


@pytest.mark.slow
def test_too_little_space_for_two_checkpoints_exits_74_before_training(
    tmp_path: Path, trainer_env: dict[str, str]
) -> None:
    """The estimate comes from the built model: asking room for a billion checkpoints of it fails,
    through the real statvfs, before any step or checkpoint."""
    out = tmp_path / "job"
    config = write_config(tmp_path / "run.yaml", tiny_config(out))
    env = {**controller_env(out, attempt=0), "RESPAWN_PREFLIGHT_CHECKPOINTS": str(10**9)}
    said = tmp_path / "termination-log"
    proc = run_trainer(trainer_env, config, env, said)
    assert proc.returncode == ExitCode.PREFLIGHT_FAILED, proc.stderr.decode()[-2000:]
    message = said.read_text()
    assert preflight_check(message) is PreflightCheck.FREE_SPACE, message
    assert "1000000000 checkpoints of 1 rank(s)" in message
    assert not (out / "checkpoint").exists() and not (out / "log").exists()
