"""Directories our real trainer wrote: a resume never mixes runs, and MindFormers 2.0.0's real
resolver (tests/support/mindformers_side.py, with MindFormers' own interpreter and a test-only
`hyper_parallel` stand-in) answers as we do, or refuses or picks a file it cannot load where we
resume safely (docs/trainer.md, Differences from MindFormers).

Two ranks train independently (no use_parallel, as a gang outside respawn runs without attempt
ids). The mixing cases (issue 14, item 3) are made with the real trainer:

- **a branch**: a second start resumes the named step 8 of a finished run; rank 1 dies before its
  first commit, so its meta.json still names the abandoned branch's step 10 while rank 0's names
  the new branch's step 10, under `_1`. Pairing by step number would resume rank 0 from the new
  branch and rank 1 from the old one.
- **a fresh run over an old one**: a second, fresh start in the same directory; rank 1 dies before
  its first commit. Rank 0's step 10 (the new run's) and rank 1's (the old run's) have one number.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from respawn_protocol.meta import read_meta
from respawn_protocol.resolve import resolve
from tests.support.interop import at, ours, run_gang, theirs_many
from tests.support.mindformers import mindformers_python
from tests.support.trainer import losses, step_lines, tiny_config, write_config

pytestmark = pytest.mark.slow

KILLED = -9
MF_REFUSES = "error: ValueError: Get resume-able checkpoint failed"


def gang(
    trainer_env: dict[str, str], out: Path, rank1: dict[str, str] | None = None, **config: Any
) -> list[int]:
    path = write_config(
        out.parent / f"{out.name}-{len(list(out.parent.glob(out.name + '-*.yaml')))}.yaml",
        tiny_config(out, **config),
    )
    return run_gang(trainer_env, path, rank1=rank1 or {})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, trainer_env: dict[str, str]) -> dict[str, Path]:
    """The output directories, by name."""
    base = tmp_path_factory.mktemp("ours")
    out = {name: base / name for name in ("full", "behind", "branch", "fresh over old", "safetensors")}
    assert gang(trainer_env, out["full"]) == [0, 0]
    safetensors: dict[str, Any] = {
        "load_ckpt_format": "safetensors",
        "callbacks__0__checkpoint_format": "safetensors",
    }
    assert gang(trainer_env, out["safetensors"], **safetensors) == [0, 0]
    # rank 1 is SIGKILLed right after committing step 3. Nothing pruned: otherwise whether rank 0
    # keeps its step 3 depends on whether it saw rank 1's before finishing (a loaded machine).
    behind = gang(
        trainer_env, out["behind"], {"RESPAWN_FAULT": "after_meta:3"}, callbacks__0__keep_checkpoint_max=100
    )
    assert behind == [0, KILLED]
    for name, config in (
        ("branch", {"resume_training": "tiny_rank_0-2_3.ckpt"}),
        ("fresh over old", {"load_checkpoint": "", "resume_training": False}),
    ):
        shutil.copytree(out["full"], out[name])
        codes = gang(trainer_env, out[name], {"RESPAWN_FAULT": "before_publish:1"}, **config)
        assert codes == [0, KILLED], name
    return out


def test_a_branch_resumes_from_the_last_step_of_one_lineage(
    runs: dict[str, Path], trainer_env: dict[str, str]
) -> None:
    root = runs["branch"] / "checkpoint"
    metas = [read_meta(root / f"rank_{r}") for r in (0, 1)]
    assert [m.last_ckpt_file for m in metas if m] == ["tiny_rank_0_1-2_5.ckpt", "tiny_rank_1-2_5.ckpt"]
    res = resolve(root, True, world_size=2)
    assert {r: p.name for r, p in res.files.items()} == at("tiny", "2_3")
    # The real trainer resumes both ranks from there, and each rank's losses are the finished run's.
    resumed = runs["branch"].with_name("branch resumed")
    shutil.copytree(runs["branch"], resumed)
    assert gang(trainer_env, resumed) == [0, 0]
    for rank in (0, 1):
        first = [line["resumed_from"] for line in step_lines(resumed, rank) if "resumed_from" in line][-1]
        assert first["file"] == f"tiny_rank_{rank}-2_3.ckpt" and first["global_step"] == 8
    assert losses(resumed) == losses(runs["full"])


def test_a_fresh_run_never_pairs_with_the_old_runs_files(runs: dict[str, Path]) -> None:
    root = runs["fresh over old"] / "checkpoint"
    metas = [read_meta(root / f"rank_{r}") for r in (0, 1)]
    assert [m.last_ckpt_file for m in metas if m] == ["tiny_rank_0_1-2_5.ckpt", "tiny_rank_1-2_5.ckpt"]
    # Rank 0's new run has overtaken every step of the old one and pruned it; no step of one run
    # is on both ranks, so the resume starts afresh, as the new run did, and says why.
    res = resolve(root, True, world_size=2)
    assert res.random_init, res
    assert "checkpoint files exist but no step is complete and intact on every rank" in res.warnings[-1]


CASES: dict[str, tuple[str, dict[str, Any], Any, Any, bool]] = {
    # name: (run, {resume_training, damage}, ours, theirs, they load)
    "finished": ("full", {}, None, at("tiny", "2_5"), True),
    "ranks behind": ("behind", {}, None, at("tiny", "1_3"), True),
    "no meta.json": ("full", {"rm_meta": True}, None, at("tiny", "2_5"), True),
    "no meta.json, ranks behind": ("behind", {"rm_meta": True}, at("tiny", "1_3"), MF_REFUSES, False),
    "named step without extension": (
        "full",
        {"resume_training": "tiny_rank_1-2_4"},
        None,
        at("tiny", "2_4"),
        True,
    ),
    "truncated newest": (
        "full",
        {"truncate": "rank_0/tiny_rank_0-2_5.ckpt"},
        at("tiny", "2_4"),
        at("tiny", "2_5"),
        False,
    ),
    "missing newest": ("full", {"remove": "rank_1/tiny_rank_1-2_5.ckpt"}, None, at("tiny", "2_4"), True),
    "_K branch, a rank behind": ("branch", {}, at("tiny", "2_3"), MF_REFUSES, False),
    "fresh run over an old one, a rank behind": ("fresh over old", {}, "random init", MF_REFUSES, False),
    "safetensors": ("safetensors", {"fmt": "safetensors"}, None, at("tiny", "2_5", ext="safetensors"), True),
    "safetensors, truncated newest": (
        "safetensors",
        {"fmt": "safetensors", "truncate": "rank_1/tiny_rank_1-2_5.safetensors"},
        at("tiny", "2_4", ext="safetensors"),
        at("tiny", "2_5", ext="safetensors"),
        False,
    ),
    # weights only, named as MindFormers names them: its loader takes each rank's newest file
    "checkpoint_network": (
        "full",
        {"network": True},
        None,
        {r: f"tiny_rank_{r}-network-2_5.ckpt" for r in (0, 1)},
        True,
    ),
}


@pytest.mark.skipif(not mindformers_python().exists(), reason="MindFormers' environment is not built")
def test_mindformers_reads_our_directories(runs: dict[str, Path], tmp_path: Path) -> None:
    roots = {}
    for name, (run, how, *_) in CASES.items():
        root = tmp_path / name.replace(" ", "_").replace(",", "") / "checkpoint"
        shutil.copytree(runs[run] / ("checkpoint_network" if how.get("network") else "checkpoint"), root)
        if how.get("rm_meta"):
            for meta in root.glob("rank_*/meta.json"):
                meta.unlink()
        if "truncate" in how:
            path = root / how["truncate"]
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        if "remove" in how:
            (root / how["remove"]).unlink()
        roots[name] = root
    requests = [
        {
            "checkpoint_dir": str(roots[n]),
            "resume_training": how.get("resume_training", True),
            "format": how.get("fmt", "ckpt"),
        }
        for n, (_, how, *_) in CASES.items()
    ]
    mf = dict(zip(CASES, theirs_many(requests, tmp_path / "cwd"), strict=True))
    problems = {}
    for name, (_, how, our_expected, their_expected, they_load) in CASES.items():
        our_choice = ours(roots[name], how.get("resume_training", True), how.get("fmt", "ckpt"))
        their_choice, loaded = mf[name]
        theirs_ok = (
            their_choice.startswith(their_expected)
            if isinstance(their_expected, str) and isinstance(their_choice, str)
            else their_choice == their_expected and loaded == they_load
        )
        if not theirs_ok or our_choice != (our_expected or their_expected):
            problems[name] = {"ours": our_choice, "theirs": their_choice, "they load": loaded}
    assert not problems, problems
