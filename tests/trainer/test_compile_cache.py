"""The compile cache (trainer_image/training/compile_cache.py): keys, damaged entries, killed writers,
and real MindSpore processes whose losses are bitwise those of runs without the cache."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.poll import wait_for
from tests.support.trainer import TrainerProcess, losses, run_to_end, step_lines, tiny_config, write_config
from trainer_image.config import parse_config
from trainer_image.training import compile_cache
from trainer_image.training.compile_cache import MANIFEST, CompileCache, key_of


def _key(out: str = "/tmp/out", **overrides: object) -> str:
    config = parse_config(tiny_config(Path(out), **overrides))
    return key_of(config, total_steps=20, rank=0, world_size=1, data_parallel=False)[0]


def test_the_key_follows_what_shapes_the_graphs_and_ignores_paths() -> None:
    base = _key()
    assert _key("/elsewhere", load_checkpoint="/pretrained.ckpt", resume_training=False) == base
    assert _key(runner_config__epochs=5, callbacks__0__save_checkpoint_steps=7) == base  # LR length fixed
    assert _key(lr_schedule__learning_rate=0.01) != base  # a constant inside the graph
    assert _key(model__hidden_size=64, model__intermediate_size=176) != base
    config = parse_config(tiny_config(Path("/tmp/out")))
    layouts = {
        key_of(config, total_steps=t, rank=r, world_size=w, data_parallel=dp)[0]
        for t, r, w, dp in [(20, 0, 1, False), (40, 0, 1, False), (20, 0, 2, True), (20, 1, 2, True)]
    }
    assert len(layouts) == 4


def _entry(root: Path, key: str, files: dict[str, bytes]) -> Path:
    """An entry as `publish` leaves it."""
    entry = root / key
    for rel, data in files.items():
        (entry / rel).parent.mkdir(parents=True, exist_ok=True)
        (entry / rel).write_bytes(data)
    manifest = {
        "format": compile_cache.FORMAT,
        "key": key,
        "files": {rel: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for rel, d in files.items()},
    }
    (entry / MANIFEST).write_text(json.dumps(manifest))
    return entry


GRAPHS = {"rank_0/graph_cache/compile_cache_0.mindir": b"graph-0" * 100, "rank_0/graph_cache/x.hash": b"h"}


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: (e / "rank_0/graph_cache/compile_cache_0.mindir").write_bytes(b"graph-0" * 50),  # torn
        lambda e: (e / "rank_0/graph_cache/compile_cache_0.mindir").write_bytes(b"graph-1" * 100),  # changed
        lambda e: (e / "rank_0/graph_cache/x.hash").unlink(),
        lambda e: (e / MANIFEST).write_text('{"format": 1, "key": "'),
        lambda e: (e / MANIFEST).unlink(),  # a directory someone else made
    ],
    ids=["truncated", "changed", "missing", "torn-manifest", "no-manifest"],
)
def test_a_damaged_entry_is_removed_and_the_start_compiles_in_full(
    tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    entry = _entry(tmp_path, "k" * 32, GRAPHS)
    damage(entry)
    work = tmp_path / ".work-1"
    work.mkdir()
    assert not compile_cache._copy_entry(entry, work)
    assert not entry.exists() and list(work.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [".work-1"]


def test_a_valid_entry_is_copied_whole_into_the_private_directory(tmp_path: Path) -> None:
    entry = _entry(tmp_path, "k" * 32, GRAPHS)
    work = tmp_path / ".work-1"
    work.mkdir()
    assert compile_cache._copy_entry(entry, work)
    for rel, data in GRAPHS.items():
        assert (work / rel).read_bytes() == data
    assert entry.exists()


def test_private_directories_of_gone_processes_and_unused_entries_are_pruned(tmp_path: Path) -> None:
    now = time.time()
    old_work, new_work = tmp_path / ".work-1-a", tmp_path / ".work-2-b"
    for d in (old_work, new_work):
        (d / "rank_0").mkdir(parents=True)
    os.utime(old_work, (now - 2 * compile_cache.STALE_WORK_SECONDS,) * 2)
    unused, used = _entry(tmp_path, "u" * 32, GRAPHS), _entry(tmp_path, "v" * 32, GRAPHS)
    os.utime(unused / MANIFEST, (now - 2 * compile_cache.UNUSED_ENTRY_SECONDS,) * 2)
    compile_cache._prune(tmp_path, now)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([new_work.name, used.name])


def test_publishing_never_replaces_an_entry_and_a_start_without_graphs_publishes_nothing(
    tmp_path: Path,
) -> None:
    key = "k" * 32
    work = tmp_path / ".work-1"
    (work / "rank_0").mkdir(parents=True)
    cache = CompileCache(tmp_path, key, {}, work, hit=False)
    cache.finish()  # MindSpore wrote nothing (PyNative, or no step ran)
    assert not (tmp_path / key).exists() and not work.exists()
    first = _entry(tmp_path, key, GRAPHS)
    work.mkdir()
    (work / "rank_0/graph_cache").mkdir(parents=True)
    (work / "rank_0/graph_cache/compile_cache_0.mindir").write_bytes(b"other")
    CompileCache(tmp_path, key, {}, work, hit=False).finish()
    assert (first / "rank_0/graph_cache/compile_cache_0.mindir").read_bytes() == GRAPHS[next(iter(GRAPHS))]
    assert not work.exists()


# ------------------------------------------------------------------------------- real trainer processes


def _run(
    launch: Callable[..., TrainerProcess], out: Path, cache: Path | None, **overrides: object
) -> TrainerProcess:
    path = write_config(out.parent / f"{out.name}.yaml", tiny_config(out, **overrides))
    env = {"RESPAWN_COMPILE_CACHE_DIR": str(cache)} if cache else {"RESPAWN_COMPILE_CACHE": "off"}
    p = run_to_end(launch, path, **env)
    assert p.proc.returncode == 0, p.output()[-3000:]
    return p


def _entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


@pytest.mark.slow
def test_with_the_cache_losses_are_bitwise_those_without_it_across_restarts_and_models(
    tmp_path: Path, launch: Callable[..., TrainerProcess]
) -> None:
    """MindSpore's own cache, shared by two models that differ only in the learning rate, trains the
    second with the first one's (a constant in the graph); this one keys them apart."""
    root = tmp_path / "cache"
    plain = _run(launch, tmp_path / "plain", None)
    assert "compile cache" not in plain.output()
    out = tmp_path / "cached"
    path = write_config(tmp_path / "cached.yaml", tiny_config(out))
    first = launch(path, RESPAWN_COMPILE_CACHE_DIR=str(root))
    wait_for("a few steps", lambda: len(step_lines(out)) >= 6 or first.proc.poll() is not None, 120)
    first.kill()  # a miss, published after its first step
    assert "compile cache miss" in first.output() and len(_entries(root)) == 1
    second = _run(launch, out, root)  # resumes from the job's checkpoint: a hit
    assert "compile cache hit" in second.output()
    assert losses(out) == losses(tmp_path / "plain")
    starts = [r for r in step_lines(out) if "resumed_from" in r]
    assert len(starts) == 2 and starts[1]["resumed_from"] is not None

    _run(launch, tmp_path / "fast_plain", None, lr_schedule__learning_rate=0.01, runner_config__epochs=1)
    fast = _run(launch, tmp_path / "fast", root, lr_schedule__learning_rate=0.01, runner_config__epochs=1)
    assert "compile cache miss" in fast.output() and len(_entries(root)) == 2
    assert losses(tmp_path / "fast") == losses(tmp_path / "fast_plain") != losses(tmp_path / "plain")


@pytest.mark.slow
def test_a_writer_killed_while_compiling_leaves_nothing_the_next_start_uses(
    tmp_path: Path, launch: Callable[..., TrainerProcess]
) -> None:
    root = tmp_path / "cache"
    out = tmp_path / "run"
    path = write_config(tmp_path / "run.yaml", tiny_config(out, runner_config__epochs=1))
    p = launch(path, RESPAWN_COMPILE_CACHE_DIR=str(root))
    # MindSpore writes a graph's file as soon as it has compiled it: kill the writer right then.
    wait_for(
        "the first graph written",
        lambda: (
            list(root.glob(".work-*/rank_0/graph_cache/compile_cache_0.mindir")) or p.proc.poll() is not None
        ),
        120,
        interval=0.01,
    )
    p.proc.send_signal(signal.SIGKILL)
    p.wait()
    assert _entries(root) == []  # only its private directory
    again = _run(launch, out, root, runner_config__epochs=1)
    assert "compile cache miss" in again.output() and len(_entries(root)) == 1
    _run(launch, tmp_path / "plain", None, runner_config__epochs=1)
    assert losses(out) == losses(tmp_path / "plain")


@pytest.mark.slow
def test_a_damaged_entry_is_ignored_by_a_real_start_which_trains_exactly_and_publishes_anew(
    tmp_path: Path, launch: Callable[..., TrainerProcess]
) -> None:
    root = tmp_path / "cache"
    _run(launch, tmp_path / "a", root, runner_config__epochs=1)
    (entry,) = _entries(root)
    graph = next(entry.rglob("*compile_cache_0.mindir"))
    os.chmod(graph, 0o600)
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])  # as a writer cut off mid-file
    b = _run(launch, tmp_path / "b", root, runner_config__epochs=1)
    assert "ignoring" in b.output() and "compile cache miss" in b.output()
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    assert len(_entries(root)) == 1
    assert "compile cache hit" in _run(launch, tmp_path / "c", root, runner_config__epochs=1).output()


def test_a_start_points_mindspore_at_its_private_directory_until_it_closes(tmp_path: Path) -> None:
    config = parse_config(tiny_config(tmp_path / "out"))
    environ = {"RESPAWN_COMPILE_CACHE_DIR": str(tmp_path / "root"), "MS_COMPILER_CACHE_ENABLE": "0"}
    compile_cache._used_in_process = False
    try:
        cache = CompileCache.open(
            config, total_steps=20, rank=0, world_size=1, data_parallel=False, environ=environ
        )
        assert cache is not None and not cache.hit
        assert environ["MS_COMPILER_CACHE_ENABLE"] == "1"
        assert Path(environ["MS_COMPILER_CACHE_PATH"]).parent == tmp_path / "root"
        again = CompileCache.open(
            config, total_steps=20, rank=0, world_size=1, data_parallel=False, environ={}
        )
        assert again is None  # MindSpore keeps a process's first cache path
        cache.finish()
        assert environ == {
            "RESPAWN_COMPILE_CACHE_DIR": str(tmp_path / "root"),
            "MS_COMPILER_CACHE_ENABLE": "0",
        }
        assert list((tmp_path / "root").iterdir()) == []  # no graph written: nothing published
    finally:
        compile_cache._used_in_process = False
    off = {"RESPAWN_COMPILE_CACHE": "off"}
    assert (
        CompileCache.open(config, total_steps=20, rank=0, world_size=1, data_parallel=False, environ=off)
        is None
    )
    assert off == {"RESPAWN_COMPILE_CACHE": "off"}
