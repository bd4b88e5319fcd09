"""Crash-safe file publication: write under a temporary name, fsync, rename, fsync the directory.

A file under its final name is therefore always complete and durable. A crash leaves at most a
`.tmp-*` file behind, which `remove_stale_temps` clears on the next start.
"""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from respawn_protocol.digest import sha256_stream
from respawn_protocol.layout import TEMP_PREFIX

# No access for other users: jobs of other tenants may share the volume (docs/security.md). The
# group keeps read access, for a controller or tool running in the job's group (fsGroup).
FILE_MODE = 0o640
DIR_MODE = 0o750
# Set by the entry point: what MindSpore and the logs write is not world-readable either.
UMASK = 0o027
# Held while a commit record (or any file replaced in place) is written; a process that cuts itself
# off takes it first (training/stop.py), so it never leaves in the middle of one.
COMMITTING = threading.Lock()


def make_dirs(path: Path) -> None:
    """`mkdir -p` whose new directories get DIR_MODE whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(directory, DIR_MODE)


def temp_path(final: Path) -> Path:
    # Keep the extension last: MindSpore appends one to paths that lack it.
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}")


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Make a fully written temp file durable under its final name. Never overwrites."""
    if final.exists():
        raise FileExistsError(f"refusing to overwrite {final}")
    os.chmod(tmp, FILE_MODE)  # MindSpore leaves 0400, which other readers (the controller) cannot open
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


def atomic_write_bytes(final: Path, data: bytes) -> None:
    """Replace `final` atomically (used for meta.json, which is rewritten on every commit)."""
    with COMMITTING:
        tmp = temp_path(final)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)


def publish_and_digest(tmp: Path, final: Path) -> str:
    """`publish`, with the sha256 computed from the page cache while fsync waits for the disk."""
    with open(tmp, "rb", buffering=0) as f, ThreadPoolExecutor(1, thread_name_prefix="sha256") as pool:
        digest = pool.submit(sha256_stream, f)
        publish(tmp, final)
        return digest.result()


def remove_stale_temps(directory: Path) -> list[Path]:
    """Delete temp files left by a crashed writer. Only for directories this process owns."""
    removed = []
    if directory.is_dir():
        for entry in os.scandir(directory):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed
