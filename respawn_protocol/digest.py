"""sha256 of checkpoint files, as recorded in meta.json and checked on resume."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from respawn_protocol.safefs import open_regular

_CHUNK = 8 << 20


def sha256_file(path: Path) -> str:
    """The digest of a regular file, opened without following a link (safefs)."""
    with open_regular(path) as f:
        return sha256_stream(f)


def sha256_stream(f: io.RawIOBase | io.BufferedIOBase) -> str:
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()
