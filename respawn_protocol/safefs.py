"""Reading and writing under a directory that others can write to: the shared volume.

One rule for the trainer, the controller's observer and the CLI: below a root they were given (an
output directory, a checkpoint directory), **no symlink is followed**, whether it leads outside or
stays inside, and only regular files are read. Each component below the root is opened with
`O_NOFOLLOW` relative to its parent's descriptor, so what is checked is what is used. Files are
opened `O_NONBLOCK` (a FIFO named `meta.json` cannot block a reader) and read up to a named cap;
directory listings stop at a named cap. The root itself is trusted as given (it may sit behind a
symlink of the administrator's: `/data -> /mnt/nfs`).

Every refusal is an `UnsafeFile` (a `ValueError`) saying which path and why.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePath

# A meta.json holds one ~0.4 KB record per retained checkpoint; keep_checkpoint_max is at most
# 10,000 (trainer config), so 10,000 records with long names are ~4.3 MB: a 16 MiB cap leaves 4x.
META_MAX_BYTES = 16 << 20
# A strategy file lists the parameters one rank saves: ~1 MB for ten thousand parameters.
STRATEGY_MAX_BYTES = 64 << 20
# One steps.jsonl line is ~250 bytes; longer lines are skipped without being held whole.
LINE_MAX_BYTES = 64 << 10
# Entries one directory listing examines (a checkpoint root of 262,144 rank folders, the CRD's
# largest gang of 4096 pods x 64 ranks, fits twice).
MAX_ENTRIES = 1 << 19

_NO_LINKS = "respawn never follows links under its directories"
# O_PATH (Linux): a directory is walked through even if it may only be searched, not listed.
_DIR_FLAGS = (getattr(os, "O_PATH", 0) or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(ValueError):
    """A path under a root that respawn refuses to read or write."""


class UnsafePath(UnsafeFile):
    """A symlink, a name that leaves the root, or a component that is not a directory."""


class NotRegular(UnsafeFile):
    """A FIFO, device, socket or directory where a regular file was expected."""


class TooLarge(UnsafeFile):
    """A file beyond its cap."""


class TooManyEntries(UnsafeFile):
    """A directory listing beyond its cap."""


def relative_parts(root: Path, path: Path) -> list[str]:
    """`path`'s components below `root`, lexically (nothing resolved); UnsafePath if it is not below."""
    try:
        parts = PurePath(path).relative_to(root).parts
    except ValueError:
        raise UnsafePath(f"{path} is not under {root}") from None
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"{path}: '..' is not allowed")
    return list(parts)


def _open_component(name: str, flags: int, dir_fd: int, shown: Path) -> int:
    try:
        return os.open(name, flags, 0o666, dir_fd=dir_fd)
    except OSError as e:
        if _is_symlink(name, dir_fd):
            raise UnsafePath(f"{shown} is a symlink; {_NO_LINKS}") from e
        if isinstance(e, NotADirectoryError):
            raise UnsafePath(f"{shown} is not a directory") from e
        raise


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def _walk(root: Path, parts: list[str], *, create: bool = False, mode: int = 0o755) -> Iterator[int]:
    """A descriptor of `root/parts...`, each component opened without following links."""
    fd = os.open(root, _DIR_FLAGS & ~os.O_NOFOLLOW)  # the root is trusted as given
    try:
        shown = root
        for part in parts:
            shown = shown / part
            made = False
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
                    made = True
            child = _open_component(part, _DIR_FLAGS, fd, shown)
            if made:  # give back what the umask took; through the descriptor, which O_PATH allows
                os.chmod(f"/proc/self/fd/{child}", mode)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def ensure_dir(root: Path, path: Path, *, create: bool = True, mode: int = 0o755) -> None:
    """Make `path` (under `root`) a directory, creating missing components (with `mode`), following
    no link. With `create=False` only check what exists: a missing component ends the check."""
    try:
        with _walk(root, relative_parts(root, path), create=create, mode=mode):
            return
    except FileNotFoundError:
        if create:
            raise


@contextlib.contextmanager
def open_regular(
    path: Path, *, root: Path | None = None, limit: int | None = None
) -> Iterator[io.BufferedReader]:
    """`path` opened for reading: a regular file of at most `limit` bytes, reached from `root`
    (default: its own directory) without following links, opened without blocking."""
    root = path.parent if root is None else root
    parts = relative_parts(root, path)
    if not parts:
        raise NotRegular(f"{path} is a directory")
    with _walk(root, parts[:-1]) as dir_fd:
        fd = _open_component(parts[-1], _READ_FLAGS, dir_fd, path)
    f = os.fdopen(fd, "rb")
    with f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(f"{path} is not a regular file ({_kind(st.st_mode)})")
        if limit is not None and st.st_size > limit:
            raise TooLarge(f"{path} is {st.st_size} bytes, more than the {limit} allowed")
        yield f


def open_append(path: Path, *, root: Path | None = None) -> int:
    """A descriptor appending to `path` (created if absent, readable for its tail), reached from
    `root` without following links; NotRegular unless it is a regular file."""
    root = path.parent if root is None else root
    parts = relative_parts(root, path)
    if not parts:
        raise NotRegular(f"{path} is a directory")
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    with _walk(root, parts[:-1]) as dir_fd:
        fd = _open_component(parts[-1], flags, dir_fd, path)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(f"{path} is not a regular file ({_kind(st.st_mode)})")
    return fd


def read_regular(path: Path, *, root: Path | None = None, limit: int) -> bytes:
    """The whole of a regular file of at most `limit` bytes (see `open_regular`)."""
    with open_regular(path, root=root, limit=limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"{path} grew beyond the {limit} bytes allowed while being read")
    return data


def check_no_links(root: Path, path: Path) -> None:
    """UnsafePath if a component of `path` below `root` is a symlink; a missing one ends the check."""
    current = root
    for part in relative_parts(root, path):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode):
            raise UnsafePath(f"{current} is a symlink; {_NO_LINKS}")


def lstat_regular(path: Path) -> os.stat_result:
    """`path`'s own status: NotRegular for a FIFO, device or directory, UnsafePath for a symlink."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePath(f"{path} is a symlink; {_NO_LINKS}")
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(f"{path} is not a regular file ({_kind(st.st_mode)})")
    return st


def iter_entries(directory: Path, *, limit: int | None = None) -> Iterator[os.DirEntry[str]]:
    """The entries of `directory`, one at a time; TooManyEntries after `limit` (default
    `MAX_ENTRIES`) rather than an unbounded listing."""
    limit = MAX_ENTRIES if limit is None else limit
    with os.scandir(directory) as it:
        for count, entry in enumerate(it):
            if count >= limit:
                raise TooManyEntries(f"{directory} holds more than {limit} entries; not read further")
            yield entry


def scan(directory: Path, *, limit: int | None = None) -> list[os.DirEntry[str]]:
    """`iter_entries` as a list."""
    return list(iter_entries(directory, limit=limit))


def real_dir(entry: os.DirEntry[str]) -> bool:
    """A directory entry that is a directory itself, not a link to one."""
    return entry.is_dir(follow_symlinks=False)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"
