"""What a foreign trainer's (MindFormers') checkpoint says about its progress, read without MindSpore.

MindFormers' meta.json names the newest file and its `(last_epoch, last_step)`, where `last_step`
counts within the epoch and restarts after MindFormers' own resume (global step 15 of a run resumed
from step 10 is saved as `..._1-1_5.ckpt` with `last_step` 5). The absolute step is in the file:
MindFormers appends `step_num` (steps of all its runs, continued across resumes) and `epoch_num` to
every checkpoint. This reads those two scalars from a `.ckpt` (MindSpore's protobuf: a sequence of
`(tag, tensor)` entries, walked by length so the weights are skipped, not read) or a `.safetensors`
file (its JSON header, then the two scalars' bytes).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from respawn_protocol import safefs

WANTED = ("step_num", "epoch_num")
_SMALL = 4096  # a scalar's entry is a few dozen bytes; anything larger is skipped
_HEADER_MAX = 100 * 1024 * 1024  # safetensors' own cap on its header
_INTS = {"Int32": "<i", "Int64": "<q", "I32": "<i", "I64": "<q"}


class UnreadableCheckpoint(ValueError):
    pass


@dataclass(frozen=True)
class Progress:
    step: int  # the absolute step (MindFormers' step_num)
    epoch: int | None


def _varint(f: BinaryIO) -> int:
    shift = value = 0
    while True:
        byte = f.read(1)
        if not byte:
            raise UnreadableCheckpoint("truncated")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7


def _fields(data: bytes) -> dict[int, bytes | int]:
    """The fields of one small protobuf message (the last of each number)."""
    out: dict[int, bytes | int] = {}
    f = io.BytesIO(data)
    while f.tell() < len(data):
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number] = _varint(f)
        elif wire == 2:
            out[number] = f.read(_varint(f))
        else:
            raise UnreadableCheckpoint(f"unexpected wire type {wire}")
    return out


def _ckpt_scalar(entry: bytes) -> int:
    tensor = _fields(entry).get(2)
    if not isinstance(tensor, bytes):
        raise UnreadableCheckpoint("entry without a tensor")
    fields = _fields(tensor)
    kind, content = fields.get(2), fields.get(3)
    fmt = _INTS.get(kind.decode() if isinstance(kind, bytes) else "")
    if fmt is None or not isinstance(content, bytes) or len(content) != struct.calcsize(fmt):
        raise UnreadableCheckpoint(f"not an integer scalar: {kind!r}")
    return int(struct.unpack(fmt, content)[0])


def _read_ckpt(f: BinaryIO, size: int) -> dict[str, int]:
    found: dict[str, int] = {}
    while f.tell() < size and len(found) < len(WANTED):
        if _varint(f) != 0x0A:  # field 1 (value), length-delimited
            raise UnreadableCheckpoint("not a MindSpore checkpoint")
        length = _varint(f)
        start = f.tell()
        if _varint(f) != 0x0A:
            raise UnreadableCheckpoint("entry without a name")
        tag = f.read(_varint(f)).decode(errors="replace")
        if tag in WANTED and length <= _SMALL:
            f.seek(start)
            found[tag] = _ckpt_scalar(f.read(length))
        f.seek(start + length)
    return found


def _read_safetensors(f: BinaryIO, size: int) -> dict[str, int]:
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(_HEADER_MAX, size - 8):
        raise UnreadableCheckpoint("bad safetensors header length")
    header = json.loads(f.read(n))
    found = {}
    for name in WANTED:
        info = header.get(name)
        if not isinstance(info, dict) or info.get("dtype") not in _INTS:
            continue
        begin, end = info["data_offsets"]
        fmt = _INTS[info["dtype"]]
        if end - begin != struct.calcsize(fmt):
            continue
        f.seek(8 + n + begin)
        found[name] = int(struct.unpack(fmt, f.read(end - begin))[0])
    return found


def read_progress(path: Path, *, root: Path) -> Progress:
    """The absolute step and epoch a MindFormers checkpoint file records; UnreadableCheckpoint if it
    has none (or is not a checkpoint), OSError / safefs.UnsafeFile as the file system says."""
    with safefs.open_regular(path, root=root) as f:
        size = f.seek(0, 2)
        f.seek(0)
        try:
            found = _read_safetensors(f, size) if path.suffix == ".safetensors" else _read_ckpt(f, size)
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise UnreadableCheckpoint(f"{path}: {e}") from e
    if "step_num" not in found:
        raise UnreadableCheckpoint(f"{path}: no step_num")
    return Progress(found["step_num"], found.get("epoch_num"))
