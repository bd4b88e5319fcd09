"""Our resolver and MindFormers 2.0.0's real one on directories MindFormers' real writer wrote.

The writer is MindFormers' `CheckpointMonitor` driven directly from MindSpore's `Model.train` over a
tiny network (tests/support/mindformers_side.py says why not its whole Trainer); a resumed run is a
second monitor after loading a checkpoint, which restarts the (epoch, step) numbering under the
next `_K` prefix as MindFormers' resumed Trainer does. MindFormers runs with its own interpreter and
a test-only stand-in for `hyper_parallel` (tests/support/mindformers.py).

Each case says what every rank would resume from: the same on both sides, or, where MindFormers is
unsafe or refuses a layout we resolve safely, our choice and theirs (docs/trainer.md, Differences
from MindFormers).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.interop import Choice, at, mf_write, ours, theirs_many
from tests.support.mindformers import mindformers_python

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not mindformers_python().exists(), reason="MindFormers' environment is not built"),
]


@dataclass(frozen=True)
class Case:
    source: str  # which written directory it starts from
    damage: Callable[[Path], None] = lambda root: None
    resume_training: bool | str = True
    fmt: str = "ckpt"
    ours: Choice | None = None  # None: the same as theirs
    theirs: Choice | str = ""  # a choice, or the start of MindFormers' error
    theirs_loads: bool = True
    # after our trainer failed to load rank 0's file of our choice, resolving again without it
    after_failed_load: Choice | None = None


def rm_meta(root: Path) -> None:
    for meta in root.glob("rank_*/meta.json"):
        meta.unlink()


def empty(rank: int, name: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / f"rank_{rank}" / name).write_bytes(b"")

    return damage


def truncate(name: str, rank: int) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / f"rank_{rank}" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return damage


def remove(rank: int, name: str, rename_to: str | None = None) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / f"rank_{rank}" / name
        if rename_to:
            path.rename(path.with_name(rename_to))
        else:
            path.unlink()

    return damage


CKP = "CKP"
CASES = {
    # rank 1 saved steps 2 and 4, rank 0 also 6: both take the oldest meta.json's step
    "ranks behind": Case("behind", theirs=at(CKP, "1_4")),
    # without meta.json MindFormers wants each rank's newest file to have one name, and refuses
    "no meta.json, ranks behind": Case(
        "behind", rm_meta, ours=at(CKP, "1_4"), theirs="error: ValueError: Get resume-able checkpoint failed"
    ),
    "no meta.json": Case("both", rm_meta, theirs=at(CKP, "1_6")),
    # meta.json names a file emptied afterwards: MindFormers picks it and cannot load it
    "empty newest file": Case(
        "both",
        empty(0, "CKP_rank_0-1_6.ckpt"),
        ours=at(CKP, "1_4"),
        theirs=at(CKP, "1_6"),
        theirs_loads=False,
    ),
    "missing file": Case("both", remove(1, "CKP_rank_1-1_6.ckpt"), theirs=at(CKP, "1_4")),
    "renamed file": Case(
        "both", remove(1, "CKP_rank_1-1_6.ckpt", rename_to="old_rank_1-1_6.ckpt"), theirs=at(CKP, "1_4")
    ),
    "named step without extension": Case("behind", resume_training="CKP_rank_1-1_2", theirs=at(CKP, "1_2")),
    # a resumed run: `_1`, numbering restarted; its 1_4 is global step 10, newer than 1_6 of `_0`
    "renumbered after resume": Case("resumed", theirs=at(CKP, "1_4", run="_1")),
    "renumbered, no meta.json": Case("resumed", rm_meta, theirs=at(CKP, "1_4", run="_1")),
    # only rank 0 resumed: MindFormers compares (epoch, step) across runs, takes rank 0's `_1`
    # file for the oldest and finds no `_1` file on rank 1; the newest step on both is `_0`'s 1_6
    "renumbered, one rank resumed": Case(
        "resumed on rank 0",
        ours=at(CKP, "1_6"),
        theirs="error: ValueError: Get resume-able checkpoint failed",
    ),
    "renumbered, damaged newest run": Case(
        "resumed",
        empty(1, "CKP_rank_1_1-1_4.ckpt"),
        ours=at(CKP, "1_2", run="_1"),
        theirs=at(CKP, "1_4", run="_1"),
        theirs_loads=False,
    ),
    # a truncated .ckpt shows nowhere but in loading it: the same choice, then we fall back
    "truncated newest .ckpt": Case(
        "both",
        truncate("CKP_rank_0-1_6.ckpt", 0),
        theirs=at(CKP, "1_6"),
        theirs_loads=False,
        after_failed_load=at(CKP, "1_4"),
    ),
    "safetensors, ranks behind": Case(
        "st behind", fmt="safetensors", theirs=at(CKP, "1_4", ext="safetensors")
    ),
    # a truncated safetensors file shows in its header; MindFormers loads it and fails
    "safetensors, truncated newest": Case(
        "st both",
        truncate("CKP_rank_1-1_6.safetensors", 1),
        fmt="safetensors",
        ours=at(CKP, "1_4", ext="safetensors"),
        theirs=at(CKP, "1_6", ext="safetensors"),
        theirs_loads=False,
    ),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The directories MindFormers' writer leaves, by name (each run's `checkpoint/`)."""
    base = tmp_path_factory.mktemp("mf_written")
    cwd = base / "cwd"
    out = {name: base / name.replace(" ", "_") for name in ("both", "behind", "st both", "st behind")}
    jobs = [
        (out["both"], 0, 6, {}),
        (out["both"], 1, 6, {}),
        (out["behind"], 0, 6, {}),
        (out["behind"], 1, 4, {}),
        (out["st both"], 0, 6, {"format": "safetensors"}),
        (out["st both"], 1, 6, {"format": "safetensors"}),
        (out["st behind"], 0, 6, {"format": "safetensors"}),
        (out["st behind"], 1, 4, {"format": "safetensors"}),
    ]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda j: mf_write(j[0], j[1], j[2], cwd / str(id(j)), save_every=2, **j[3]), jobs))
    for name, ranks in (("resumed", (0, 1)), ("resumed on rank 0", (0,))):
        out[name] = base / name.replace(" ", "_")
        shutil.copytree(out["both"], out[name])
        for rank in ranks:
            ckpt = out[name] / "checkpoint" / f"rank_{rank}" / f"CKP_rank_{rank}-1_6.ckpt"
            assert mf_write(out[name], rank, 4, cwd, save_every=2, load=str(ckpt)) == 10
    return {name: path / "checkpoint" for name, path in out.items()}


@pytest.fixture(scope="module")
def answers(written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each case's directory (a damaged copy), with both answers."""
    base = tmp_path_factory.mktemp("mf_cases")
    roots = {}
    for name, case in CASES.items():
        root = base / name.replace(" ", "_").replace(",", "") / "checkpoint"
        shutil.copytree(written[case.source], root)
        case.damage(root)
        roots[name] = root
    requests = [
        {"checkpoint_dir": str(roots[n]), "resume_training": c.resume_training, "format": c.fmt}
        for n, c in CASES.items()
    ]
    mf = theirs_many(requests, base / "cwd")
    out = {}
    for i, (name, case) in enumerate(CASES.items()):
        choice = ours(roots[name], case.resume_training, case.fmt)
        again = None
        if case.after_failed_load is not None and isinstance(choice, dict):
            failed = [roots[name] / "rank_0" / choice[0]]
            again = ours(roots[name], case.resume_training, case.fmt, exclude=failed)
        out[name] = (choice, *mf[i], again)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_mindformers_written(name: str, answers: dict[str, tuple]) -> None:
    case = CASES[name]
    our_choice, their_choice, they_load, after_failed_load = answers[name]
    summary = json.dumps({"ours": our_choice, "theirs": their_choice, "they load": they_load})
    if isinstance(case.theirs, str):
        assert isinstance(their_choice, str) and their_choice.startswith(case.theirs), summary
    else:
        assert their_choice == case.theirs and they_load == case.theirs_loads, summary
    assert our_choice == (case.ours if case.ours is not None else case.theirs), summary
    assert after_failed_load == case.after_failed_load, summary
