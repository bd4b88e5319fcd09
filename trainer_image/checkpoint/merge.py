"""auto_trans_ckpt: merge one step's rank shards into a single full checkpoint for a new world size.

    output_dir/unified_checkpoint/unified-{epoch}_{step}.{ckpt|safetensors}   the full state
    output_dir/unified_checkpoint/meta.json                                    written last

The strategy files of the gang that wrote the step (`strategy/ckpt_strategy_rank_N.json`) say which
rank saved which parameter (all of them, or a share with `remove_redundancy`); the merge reads each
parameter from the lowest rank that saved it, and the `respawn.*` progress from rank 0. A shard that
lacks what its strategy promised (a stale strategy file) is covered by any other shard holding it.

Crash safety: the merged file is written under a temp name, fsynced and renamed; meta.json, naming
the step, its source shards and the file's sha256, is written last. A merge is reused only when
meta.json names the same step from the same shards and the file still matches its sha256; anything
else in the directory (an older merge, a half-written one) is removed before merging again: merges
are copies, the committed shards the resolver chose are the record.

The framework is injected (`read`, `write`), so everything but the file I/O is tested without it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from respawn_protocol import safefs
from respawn_protocol.digest import sha256_file
from respawn_protocol.layout import TEMP_PREFIX, CheckpointName, StepKey
from trainer_image.checkpoint.commit import atomic_write_bytes, fsync_dir, publish_and_digest, temp_path
from trainer_image.checkpoint.confine import make_dir
from trainer_image.checkpoint.progress import EXTRA_PREFIX
from trainer_image.config import ConfigError

log = logging.getLogger("trainer_image.checkpoint.merge")

UNIFIED_DIR = "unified_checkpoint"
STRATEGY_DIR = "strategy"
META = "meta.json"
FORMAT_VERSION = 1

Reader = Callable[[Path], Mapping[str, Any]]  # shard -> {parameter name: value}
Writer = Callable[[dict[str, Any], Path, str], None]  # (parameters, temp path, format) -> None


class MergeError(ConfigError):
    """The step cannot be merged (no strategy for its gang, a parameter nobody saved). Permanent."""


@dataclass(frozen=True)
class Strategy:
    """One rank's strategy file: what its checkpoints hold."""

    rank: int
    world_size: int
    saved: frozenset[str]
    batch_size: int


def strategy_path(strategy_dir: Path, rank: int) -> Path:
    return strategy_dir / f"ckpt_strategy_rank_{rank}.json"


def strategy_body(
    *, rank: int, world_size: int, saved: set[str], batch_size: int, remove_redundancy: bool
) -> bytes:
    body = {
        "rank": rank,
        "world_size": world_size,
        "parallel_mode": "data_parallel",
        "remove_redundancy": remove_redundancy,
        "batch_size": batch_size,
        "saved_parameters": sorted(saved),
    }
    return (json.dumps(body, indent=1) + "\n").encode()


def write_strategy(
    output_dir: Path, *, rank: int, world_size: int, saved: set[str], batch_size: int, remove_redundancy: bool
) -> None:
    """`output_dir/strategy/ckpt_strategy_rank_N.json`: what this rank's checkpoints hold."""
    directory = make_dir(output_dir, output_dir / STRATEGY_DIR)
    body = strategy_body(
        rank=rank,
        world_size=world_size,
        saved=saved,
        batch_size=batch_size,
        remove_redundancy=remove_redundancy,
    )
    atomic_write_bytes(strategy_path(directory, rank), body)


def read_strategies(strategy_dir: Path, world_size: int) -> dict[int, Strategy]:
    """The strategy files of a `world_size`-rank gang; MergeError if one is missing or of another gang."""
    out = {}
    for rank in range(world_size):
        path = strategy_path(strategy_dir, rank)
        try:
            raw = json.loads(safefs.read_regular(path, root=strategy_dir, limit=safefs.STRATEGY_MAX_BYTES))
            strategy = Strategy(
                rank=int(raw["rank"]),
                world_size=int(raw["world_size"]),
                saved=frozenset(str(n) for n in raw["saved_parameters"]),
                batch_size=int(raw["batch_size"]),
            )
        except FileNotFoundError as e:
            raise MergeError(
                f"cannot merge a {world_size}-rank checkpoint: {path} is missing "
                "(only checkpoints written with use_parallel can be merged)"
            ) from e
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MergeError(f"cannot merge: {path} is unreadable ({e!r})") from e
        if (strategy.rank, strategy.world_size) != (rank, world_size):
            raise MergeError(
                f"cannot merge a {world_size}-rank checkpoint: {path} describes rank "
                f"{strategy.rank} of {strategy.world_size}"
            )
        out[rank] = strategy
    return out


def plan_sources(strategies: Mapping[int, Strategy]) -> dict[str, int]:
    """Parameter name -> the lowest rank whose shard holds it, per the strategy files."""
    sources: dict[str, int] = {}
    for rank in sorted(strategies, reverse=True):
        for name in strategies[rank].saved:
            sources[name] = rank
    return sources


def merge_params(shards: Mapping[int, Path], sources: Mapping[str, int], read: Reader) -> dict[str, Any]:
    """Every planned parameter from its source shard (or any shard, if the source lacks it), plus the
    `respawn.*` progress of rank 0. Shards are read at most once, and only when needed."""
    cache: dict[int, Mapping[str, Any]] = {}

    def shard(rank: int) -> Mapping[str, Any]:
        if rank not in cache:
            cache[rank] = read(shards[rank])
        return cache[rank]

    merged = {k: v for k, v in shard(0).items() if k.startswith(EXTRA_PREFIX)}
    for name, rank in sorted(sources.items(), key=lambda kv: (kv[1], kv[0])):
        for candidate in [rank, *sorted(r for r in shards if r != rank)]:
            params = shard(candidate)
            if name in params:
                merged[name] = params[name]
                break
        else:
            raise MergeError(f"cannot merge: no shard holds parameter {name}")
    return merged


@dataclass(frozen=True)
class UnifiedMeta:
    file: str
    key: StepKey
    size: int
    sha256: str
    sources: dict[int, tuple[str, int]]  # rank -> (shard file name, size)

    def to_json(self) -> bytes:
        body = {
            "format_version": FORMAT_VERSION,
            "file": self.file,
            "epoch": self.key.epoch,
            "step": self.key.step,
            "size": self.size,
            "sha256": self.sha256,
            "source_world_size": len(self.sources),
            "sources": [{"rank": r, "file": f, "size": n} for r, (f, n) in sorted(self.sources.items())],
        }
        return (json.dumps(body, indent=1) + "\n").encode()


def read_unified_meta(directory: Path) -> UnifiedMeta | None:
    try:
        data = safefs.read_regular(directory / META, root=directory.parent, limit=safefs.META_MAX_BYTES)
        raw = json.loads(data)
        return UnifiedMeta(
            file=str(raw["file"]),
            key=StepKey(int(raw["epoch"]), int(raw["step"])),
            size=int(raw["size"]),
            sha256=str(raw["sha256"]),
            sources={int(s["rank"]): (str(s["file"]), int(s["size"])) for s in raw["sources"]},
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable %s: %s", directory / META, e)
        return None


def _source_ids(shards: Mapping[int, Path]) -> dict[int, tuple[str, int]]:
    return {r: (p.name, p.stat().st_size) for r, p in shards.items()}


def reusable(directory: Path, key: StepKey, shards: Mapping[int, Path]) -> Path | None:
    """The merged file of this step from these shards, if one is complete and intact."""
    meta = read_unified_meta(directory)
    if meta is None or meta.key != key or meta.sources != _source_ids(shards):
        return None
    path = directory / meta.file
    try:
        if safefs.lstat_regular(path).st_size != meta.size or sha256_file(path) != meta.sha256:
            log.warning("the merged %s does not match its meta.json; merging again", path)
            return None
    except (OSError, safefs.UnsafeFile):
        return None
    return path


def unify(
    output_dir: Path,
    key: StepKey,
    shards: Mapping[int, Path],
    *,
    read: Reader,
    write: Writer,
    strategy_dir: Path | None = None,
) -> Path:
    """The full checkpoint of step `key` in `output_dir/unified_checkpoint/`, merged from `shards`
    (rank -> file of that step) unless an intact merge of the same shards is already there."""
    directory = output_dir / UNIFIED_DIR
    found = reusable(directory, key, shards)
    if found is not None:
        log.info("reusing the merged checkpoint %s", found)
        return found
    world = len(shards)
    if sorted(shards) != list(range(world)):
        raise MergeError(f"cannot merge step {key}: shards of ranks {sorted(shards)}")
    if world == 1:
        sources = {name: 0 for name in read(shards[0]) if not name.startswith(EXTRA_PREFIX)}
    else:
        sources = plan_sources(read_strategies(strategy_dir or output_dir / STRATEGY_DIR, world))
    merged = merge_params(shards, sources, read)
    ext = shards[0].suffix.lstrip(".")
    name = CheckpointName("unified", key, ext).name
    make_dir(output_dir, directory)
    final = directory / name
    _clear(directory)
    tmp = temp_path(final)
    write(merged, tmp, ext)
    sha256 = publish_and_digest(tmp, final)
    meta = UnifiedMeta(name, key, final.stat().st_size, sha256, _source_ids(shards))
    atomic_write_bytes(directory / META, meta.to_json())
    log.info("merged step %s of %d ranks into %s", key, world, final)
    return final


def write_with_mindspore(params: dict[str, Any], path: Path, fmt: str) -> None:
    import mindspore as ms

    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()], str(path), format=fmt)


def _clear(directory: Path) -> None:
    """Remove meta.json first (so it never names a missing file), then every merged or temp file."""
    (directory / META).unlink(missing_ok=True)
    for entry in os.scandir(directory):
        ours = entry.name.startswith((TEMP_PREFIX, "unified-"))
        if ours and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    fsync_dir(directory)
