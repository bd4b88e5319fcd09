"""The optional checkpoint observer on a hostile or slow shared volume (docs/security.md, "Input
the controller trusts least"): it reads on its own thread, never blocks on a FIFO, never follows a
symlink below the shared root, and a hung read never stalls the reconcile workers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from controller.adapters import checkpoint_observer
from controller.adapters.checkpoint_observer import CheckpointObserver
from tests.support.bounded import within
from tests.support.outputs import commit, write_steps


def wait_for(what: str, check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def observer(tmp_path: Path) -> object:
    changed: list[str] = []
    obs = CheckpointObserver(tmp_path / "shared", on_change=changed.append, refresh_wait=0.3)
    obs.root.mkdir()
    obs.changed = changed  # type: ignore[attr-defined]
    obs._reader.start()  # the reader only: no inotify watch needed for these tests
    yield obs
    obs.stop()


def test_fifos_named_meta_json_and_steps_jsonl_never_block(observer: CheckpointObserver) -> None:
    good, bad = observer.root / "ns" / "good", observer.root / "ns" / "bad"
    commit(good, 0, [5, 10])
    write_steps(good, 0, [(None, range(1, 11))])
    commit(bad, 0, [5])
    fifos = [bad / "checkpoint" / "rank_0" / "meta.json", bad / "log" / "rank_0" / "steps.jsonl"]
    fifos[0].unlink()
    fifos[1].parent.mkdir(parents=True)
    for fifo in fifos:
        os.mkfifo(fifo)

    def track_and_refresh() -> None:
        observer.track("ns/bad", "ns/bad", 1)
        observer.track("ns/good", "ns/good", 1)
        assert observer.refresh("ns/good")

    within(10, track_and_refresh, fifos=fifos)
    assert observer.snapshot("ns/good").checkpoint is not None
    assert observer.snapshot("ns/good").checkpoint.step == 10  # type: ignore[union-attr]
    assert observer.snapshot("ns/good").last_step == 10
    assert within(10, lambda: observer.refresh("ns/bad"), fifos=fifos)
    bad_snap = observer.snapshot("ns/bad")
    assert bad_snap.checkpoint is not None and bad_snap.checkpoint.step == 5  # its file; meta.json ignored
    assert bad_snap.last_step is None


@pytest.mark.parametrize("linked", ["checkpoint", "checkpoint/rank_0", "log", "log/rank_0"])
def test_symlinks_below_the_shared_root_are_not_followed(
    observer: CheckpointObserver, tmp_path: Path, linked: str
) -> None:
    outside = tmp_path / "outside"
    commit(outside, 0, [7])
    write_steps(outside, 0, [(None, range(1, 8))])
    job = observer.root / "ns" / "job"
    (job / linked).parent.mkdir(parents=True)
    os.symlink(outside / linked, job / linked)
    within(10, lambda: observer.track("ns/job", "ns/job", 1))
    assert within(10, lambda: observer.refresh("ns/job"))
    snap = observer.snapshot("ns/job")
    assert snap.checkpoint is None and snap.last_step is None, snap


def test_a_hung_filesystem_never_stalls_the_reconcile_workers(
    observer: CheckpointObserver, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit(observer.root / "ns" / "slow", 0, [3])
    commit(observer.root / "ns" / "other", 0, [4])
    release = threading.Event()
    real = checkpoint_observer.last_complete

    def hung(checkpoint_dir: Path, **kw: object) -> object:
        if "slow" in str(checkpoint_dir):
            release.wait(30)  # a hard NFS mount that stopped answering
        return real(checkpoint_dir, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint_observer, "last_complete", hung)
    started = time.monotonic()
    within(2, lambda: observer.track("ns/slow", "ns/slow", 1))  # queued, not read here
    assert within(2, lambda: observer.refresh("ns/slow")) is False  # bounded wait: 0.3 s
    assert within(1, lambda: observer.refresh("ns/slow")) is False  # the reader is stuck: no wait
    within(1, lambda: observer.track("ns/other", "ns/other", 1))
    assert observer.snapshot("ns/other").checkpoint is None  # other jobs read from the last snapshot
    assert time.monotonic() - started < 2
    release.set()
    wait_for("the late answer", lambda: "ns/slow" in observer.changed)  # type: ignore[attr-defined]
    assert observer.snapshot("ns/slow").checkpoint.step == 3  # type: ignore[union-attr]
    wait_for("the other job", lambda: observer.snapshot("ns/other").checkpoint is not None)
