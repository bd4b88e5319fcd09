"""The wrapper for foreign trainers (trainer_image/wrap.py) and what it reads from their checkpoints
(trainer_image/foreign.py), with fake children: small scripts that commit checkpoints written by
MindSpore's own `save_checkpoint` as MindFormers does (its `step_num` and `epoch_num` appended, then
meta.json renamed into place), exit with a code, or wait for a signal. tests/e2e/test_mindformers_e2e.py
runs the real MindFormers under it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from respawn_protocol.contract import ExitCode
from respawn_protocol.report import decode
from tests.support import REPO
from tests.support.poll import wait_for
from trainer_image.foreign import UnreadableCheckpoint, read_progress
from trainer_image.training.report import Reporter
from trainer_image.wrap import run


def save(path: Path, step: int, epoch: int, fmt: str = "ckpt", crc: bool = False) -> Path:
    import mindspore as ms
    from mindspore import nn

    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"step_num": step, "epoch_num": epoch}
    ms.save_checkpoint(nn.Dense(3, 4), str(path), append_dict=extra, crc_check=crc, format=fmt)
    return path


@pytest.mark.parametrize(("fmt", "crc"), [("ckpt", False), ("ckpt", True), ("safetensors", False)])
def test_the_step_and_epoch_come_from_the_file(tmp_path: Path, fmt: str, crc: bool) -> None:
    path = save(tmp_path / f"CKP_rank_0_1-1_5.{fmt}", step=15, epoch=2, fmt=fmt, crc=crc)
    progress = read_progress(path, root=tmp_path)
    assert (progress.step, progress.epoch) == (15, 2), "the absolute step, not the name's renumbered one"


def test_a_file_without_a_readable_step_is_refused(tmp_path: Path) -> None:
    whole = save(tmp_path / "a.ckpt", step=3, epoch=1).read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "meta.ckpt").write_text('{"last_epoch": 1}')
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("cut.ckpt", "meta.ckpt", "empty.safetensors"):
        with pytest.raises(UnreadableCheckpoint):
            read_progress(tmp_path / name, root=tmp_path)


# Commits the files in SRC one by one as MindFormers' CheckpointMonitor does (file, then meta.json
# renamed over the old one), each once the previous one was reported (REPORTED lists them), then exits.
FAKE_TRAINER = """
import json, os, shutil, sys, time
src, rank_dir, reported, code = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
os.makedirs(rank_dir, exist_ok=True)
for name in sorted(os.listdir(src)):
    shutil.copy(os.path.join(src, name), rank_dir)
    with open(os.path.join(rank_dir, "meta.tmp"), "w") as f:
        json.dump({"last_epoch": 1, "last_step": 1, "last_ckpt_file": name}, f)
    os.replace(os.path.join(rank_dir, "meta.tmp"), os.path.join(rank_dir, "meta.json"))
    deadline = time.monotonic() + 30
    while name not in open(reported).read() and time.monotonic() < deadline:
        time.sleep(0.02)
sys.exit(code)
"""


def test_each_commit_is_reported_with_its_step_and_the_exit_code_passes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    save(src / "CKP_rank_1-1_2.ckpt", step=12, epoch=1)
    save(src / "CKP_rank_1_1-1_4.ckpt", step=14, epoch=1)  # MindFormers' renumbering after a resume
    reported = tmp_path / "reported"
    reported.write_text("")
    sent: list[str] = []

    def send(key: str, value: str) -> None:
        assert key == "training.respawn.dev/report-rank-1"
        sent.append(value)
        with reported.open("a") as f:
            f.write(value + "\n")

    environ = {
        **os.environ,
        "RESPAWN_RANK": "1",
        "RESPAWN_ATTEMPT": "2",
        "RESPAWN_JOB_CHECKPOINT_DIR": str(tmp_path / "checkpoint"),
        "RESPAWN_WRAP_POLL": "0.05",
    }
    rank_dir = str(tmp_path / "checkpoint" / "rank_1")
    command = [sys.executable, "-c", FAKE_TRAINER, str(src), rank_dir, str(reported), "3"]
    code = run(command, environ, {1: Reporter(rank=1, attempt=2, send=send, interval=0)})
    assert code == 3
    commits = [r.commit for v in sent if (r := decode(1, v)) and r.commit]
    assert [(c.file, c.step, c.epoch, c.attempt) for c in commits] == [
        ("CKP_rank_1-1_2.ckpt", 12, 1, 2),
        ("CKP_rank_1_1-1_4.ckpt", 14, 1, 2),
    ]


def test_the_checkpoint_an_earlier_attempt_left_is_not_reported_again(tmp_path: Path) -> None:
    rank_dir = tmp_path / "checkpoint" / "rank_0"
    save(rank_dir / "CKP_rank_0-1_3.ckpt", step=3, epoch=1)
    (rank_dir / "meta.json").write_text(
        '{"last_epoch": 1, "last_step": 3, "last_ckpt_file": "CKP_rank_0-1_3.ckpt"}'
    )
    sent: list[str] = []
    environ = {**os.environ, "RESPAWN_RANK": "0", "RESPAWN_JOB_CHECKPOINT_DIR": str(tmp_path / "checkpoint")}
    reporter = Reporter(rank=0, attempt=1, send=lambda _key, value: sent.append(value), interval=0)
    assert run([sys.executable, "-c", "pass"], environ, {0: reporter}) == 0
    assert sent == []


# Commits one file in each rank folder named on the command line (as msrun's local workers would),
# then exits; records whether the wrapper set RANK_ID.
FAKE_WORKERS = """
import json, os, shutil, sys
out, src, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
open(out, "w").write(os.environ.get("RANK_ID", "unset"))
for rank_dir in dirs:
    os.makedirs(rank_dir)
    name = "CKP_rank_%s-1_2.ckpt" % rank_dir.rsplit("_", 1)[1]
    shutil.copy(os.path.join(src, "step.ckpt"), os.path.join(rank_dir, name))
    with open(os.path.join(rank_dir, "meta.tmp"), "w") as f:
        json.dump({"last_epoch": 1, "last_step": 2, "last_ckpt_file": name}, f)
    os.replace(os.path.join(rank_dir, "meta.tmp"), os.path.join(rank_dir, "meta.json"))
"""


def test_every_rank_of_the_pod_is_reported(tmp_path: Path) -> None:
    save(tmp_path / "src" / "step.ckpt", step=2, epoch=1)
    sent: dict[int, list[str]] = {4: [], 5: []}

    def sender(rank: int) -> Callable[[str, str], None]:
        return lambda _key, value: sent[rank].append(value)

    reporters = {rank: Reporter(rank=rank, attempt=0, send=sender(rank), interval=0) for rank in sent}
    environ = {k: v for k, v in os.environ.items() if k != "RANK_ID"}
    environ.update(
        RESPAWN_RANK="4",
        RESPAWN_RANKS_PER_POD="2",
        RESPAWN_ATTEMPT="0",
        RESPAWN_JOB_CHECKPOINT_DIR=str(tmp_path / "checkpoint"),
    )
    dirs = [str(tmp_path / "checkpoint" / f"rank_{r}") for r in (4, 5)]
    out = tmp_path / "rank_id"
    assert (
        run([sys.executable, "-c", FAKE_WORKERS, str(out), str(tmp_path / "src"), *dirs], environ, reporters)
        == 0
    )
    assert out.read_text() == "unset", "msrun gives each local worker its RANK_ID"
    for rank, values in sent.items():
        commit = decode(rank, values[-1]).commit  # type: ignore[union-attr]
        assert commit is not None and (commit.file, commit.step) == (f"CKP_rank_{rank}-1_2.ckpt", 2)


WAITING_CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(75))
open(sys.argv[1], "w").write(os.environ.get("RANK_ID", ""))
while True:
    time.sleep(0.05)
"""


def wrapper(tmp_path: Path, *child: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPAWN_")}
    env.update(PYTHONPATH=str(REPO), RESPAWN_RANK="3")
    cmd = [sys.executable, "-m", "trainer_image.wrap", "--", sys.executable, "-c", *child]
    # A session of its own, as a pod's: the signal goes to the wrapper only, as kubelet sends it.
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, start_new_session=True)


def test_sigterm_is_passed_on_and_the_childs_code_returned(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = wrapper(tmp_path, WAITING_CHILD, str(ready))
    try:
        wait_for("the child", lambda: ready.exists() and ready.read_text() == "3", 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == ExitCode.STOPPED
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_child_killed_by_a_signal_gives_128_plus_n(tmp_path: Path) -> None:
    proc = wrapper(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert proc.wait(30) == 128 + signal.SIGKILL


def test_no_command_is_a_config_error(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "trainer_image.wrap", "--"], env=env, capture_output=True)
    assert result.returncode == ExitCode.CONFIG_ERROR
