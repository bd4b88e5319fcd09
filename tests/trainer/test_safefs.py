"""respawn_protocol/safefs.py and the readers built on it (meta.json, the resolver): no symlink
below a root is followed, metadata files never block and are size-capped, and the work of one
read does not grow with what else is in the directory (docs/security.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from respawn_protocol import candidates, safefs
from respawn_protocol.meta import MetaError, read_meta
from respawn_protocol.resolve import ResolveError, last_complete, resolve
from tests.support.bounded import within
from tests.support.outputs import commit


def test_open_regular_refuses_links_fifos_and_oversize(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(b"ok")
    os.symlink(tmp_path / "real", tmp_path / "linked")
    os.symlink(tmp_path / "real" / "f", tmp_path / "real" / "g")
    os.mkfifo(tmp_path / "real" / "fifo")
    assert safefs.read_regular(tmp_path / "real" / "f", root=tmp_path, limit=2) == b"ok"
    with pytest.raises(safefs.UnsafePath, match="linked is a symlink"):
        safefs.read_regular(tmp_path / "linked" / "f", root=tmp_path, limit=10)
    with pytest.raises(safefs.UnsafePath, match="g is a symlink"):
        safefs.read_regular(tmp_path / "real" / "g", limit=10)
    with pytest.raises(safefs.NotRegular, match="a FIFO"):
        within(
            5,
            lambda: safefs.read_regular(tmp_path / "real" / "fifo", limit=10),
            fifos=[tmp_path / "real" / "fifo"],
        )
    with pytest.raises(safefs.TooLarge, match="more than the 1 allowed"):
        safefs.read_regular(tmp_path / "real" / "f", limit=1)
    with pytest.raises(safefs.UnsafePath, match="not allowed"):
        safefs.read_regular(tmp_path / "real" / ".." / "real" / "f", root=tmp_path, limit=10)


def test_a_fifo_named_meta_json_does_not_block(tmp_path: Path) -> None:
    commit(tmp_path, 0, [1, 2])
    commit(tmp_path, 1, [1, 2])
    meta = tmp_path / "checkpoint" / "rank_1" / "meta.json"
    meta.unlink()
    os.mkfifo(meta)
    with pytest.raises(MetaError, match="not a regular file"):
        within(5, lambda: read_meta(meta.parent), fifos=[meta])
    res = within(5, lambda: last_complete(tmp_path / "checkpoint", world_size=2), fifos=[meta])
    assert res.global_step == 2  # rank 1's files still count; its meta.json is ignored, with a warning
    assert any("not a regular file (a FIFO)" in w for w in res.warnings)


def test_meta_json_is_not_read_through_a_link_nor_beyond_its_cap(tmp_path: Path) -> None:
    commit(tmp_path / "job", 0, [1, 2])
    commit(tmp_path / "elsewhere", 0, [1, 2, 3])
    rank0 = tmp_path / "job" / "checkpoint" / "rank_0"
    (rank0 / "meta.json").unlink()
    os.symlink(tmp_path / "elsewhere" / "checkpoint" / "rank_0" / "meta.json", rank0 / "meta.json")
    with pytest.raises(MetaError, match="is a symlink"):
        read_meta(rank0)
    (rank0 / "meta.json").unlink()
    with open(rank0 / "meta.json", "wb") as f:
        f.truncate(safefs.META_MAX_BYTES + 1)  # sparse: nothing is allocated unless read whole
    with pytest.raises(MetaError, match=f"more than the {safefs.META_MAX_BYTES} allowed"):
        read_meta(rank0)


def test_many_empty_rank_folders_cost_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank folders are looked up by name: 5,000 empty (or foreign) ones are not even listed."""
    commit(tmp_path, 0, [1, 2])
    commit(tmp_path, 1, [1, 2])
    for r in range(2, 5002):
        (tmp_path / "checkpoint" / f"rank_{r}").mkdir()
    listed: list[str] = []
    real_scandir = os.scandir

    def counting(path: object) -> object:
        listed.append(str(path))
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", counting)
    real_listdir = os.listdir

    def counting_listdir(path: object) -> object:
        listed.append(str(path))
        return real_listdir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "listdir", counting_listdir)
    started = time.monotonic()
    for world_size in (2, None):
        assert last_complete(tmp_path / "checkpoint", world_size=world_size).global_step == 2
    assert len(listed) <= 8, listed[:10]
    assert time.monotonic() - started < 2


def test_listings_beyond_the_cap_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit(tmp_path, 0, [1])
    for i in range(50):
        (tmp_path / "checkpoint" / "rank_0" / f"junk{i}").touch()
    monkeypatch.setattr(safefs, "MAX_ENTRIES", 20)
    with pytest.raises(ResolveError, match="holds more than 20 entries"):
        resolve(tmp_path / "checkpoint", True, world_size=1)


def test_rank_folders_stop_at_the_largest_gang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for rank in range(3):
        commit(tmp_path, rank, [1])
    monkeypatch.setattr(candidates, "MAX_RANKS", 2)  # injected: the CRD's is 4096 x 64
    assert sorted(resolve(tmp_path / "checkpoint", True).files) == [0, 1]
