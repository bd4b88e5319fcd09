"""sha256 of checkpoint files, as recorded in meta.json and checked on resume."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

_CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    with open(path, "rb", buffering=0) as f:
        return sha256_stream(f)


def sha256_stream(f: io.RawIOBase) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()
