"""Hand-made job output dirs, for the CLI tests: steps.jsonl files the way the trainer writes them (a
`resumed_from` first line per start, a torn line where a process died) and committed checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

from respawn_protocol.meta import Meta, Record, meta_path


def loss_at(step: int) -> float:
    """A float32-exact loss curve: decaying with a wiggle, so the plot has some texture."""
    value = 2.5 + 3.0 * math.exp(-step / 12) + 0.08 * math.sin(step * 1.7)
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def record(step: int, *, loss: float | None = None, **extra: Any) -> dict[str, Any]:
    value = loss_at(step) if loss is None else loss
    bits = struct.unpack("<I", struct.pack("<f", value))[0]
    return {
        "global_step": step,
        "epoch": 1,
        "step": step,
        "loss": value,
        "loss_bits": f"{bits:08x}",
        "lr": 0.001,
        **extra,
    }


def write_steps(
    output: Path, rank: int, starts: list[tuple[int | None, range]], *, torn: bool = True
) -> Path:
    """One start per (resumed_from global step or None, steps it ran); every start but the last ends
    with a torn line, as a SIGKILL mid-write leaves it."""
    path = output / "log" / f"rank_{rank}" / "steps.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (source, steps) in enumerate(starts):
        resumed = (
            None
            if source is None
            else {"file": f"e2e_rank_{rank}-1_{source}.ckpt", "step": source, "global_step": source}
        )
        for j, step in enumerate(steps):
            extra: dict[str, Any] = {"resumed_from": resumed, "startup_seconds": 1.5} if j == 0 else {}
            lines.append(json.dumps(record(step) | extra))
        if torn and i < len(starts) - 1:
            lines.append('{"global_step": 9')  # torn mid-write; the next start begins on a fresh line
    path.write_text("\n".join(lines) + "\n")
    return path


def commit(output: Path, rank: int, steps: list[int]) -> None:
    """meta.json and checkpoint files for `steps` on one rank, as the trainer commits them."""
    directory = output / "checkpoint" / f"rank_{rank}"
    directory.mkdir(parents=True, exist_ok=True)
    records = []
    for step in steps:
        path = directory / f"e2e_rank_{rank}-1_{step}.ckpt"
        data = bytes([step % 256]) * 64
        path.write_bytes(data)
        records.append(Record(path.name, 1, step, step, len(data), hashlib.sha256(data).hexdigest()))
    last = records[-1]
    meta = Meta(1, last.step, last.file, last.global_step, records)
    meta_path(directory).write_bytes(meta.to_json())
