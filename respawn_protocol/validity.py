"""Whether a checkpoint file is usable, checked as cheaply as the caller asks (`Check`).

- a file recorded in meta.json: the recorded size (`SIZE`), then its sha256 (`DIGEST`);
- an unrecorded file: non-empty and, for safetensors, a header whose data extent matches the file
  size (a truncated safetensors file is detectable from its header alone). A `.ckpt` that is corrupt
  inside is caught only when loading it fails.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

from respawn_protocol.digest import sha256_file
from respawn_protocol.meta import Record
from respawn_protocol.safefs import UnsafeFile, lstat_regular, open_regular

_MAX_SAFETENSORS_HEADER = 100 << 20


class Check(enum.Enum):
    EXISTS = "exists"
    SIZE = "size"  # one stat per file (plus the header of an unrecorded safetensors file)
    DIGEST = "digest"  # size, then sha256 of every recorded file


def invalid(path: Path, record: Record | None, check: Check) -> str | None:
    """Why this file is unusable, or None."""
    try:
        st = lstat_regular(path)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    except UnsafeFile as e:
        return str(e)
    if check is Check.EXISTS:
        return None
    if record is not None:
        if st.st_size != record.size:
            return f"size {st.st_size} != recorded {record.size}"
        if check is Check.DIGEST and sha256_file(path) != record.sha256:
            return "sha256 differs from the record"
        return None
    if st.st_size == 0:
        return "empty"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, st.st_size)
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    """A truncated safetensors file is detectable from its header alone."""
    try:
        with open_regular(path) as f:
            head = f.read(8)
            if len(head) < 8:
                return "truncated header"
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return "header length beyond the end of the file"
            header = json.loads(f.read(n))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        return f"unreadable header ({e.__class__.__name__})"
    expected = 8 + n + max(ends, default=0)
    if expected != size:
        return f"data ends at byte {expected}, file has {size}"
    return None
