"""Pre-flight: before training, each rank checks what its checkpoints depend on (seed 003's
environment pre-check), so a disk that cannot hold them fails the start at once, naming the check,
instead of after hours of steps that cannot be saved, and ranks that do not share the output
directory stop instead of each resuming from its own view of it (random init on all but one).

The checks (`contract.PreflightCheck`); a failure is a `PreflightError`, exit 74, and its message
goes to the termination log (`say`), where the controller reads which check failed:

- `writable`: this rank creates, writes, fsyncs and removes a file in `output_dir`.
- `shared-directory`, with several ranks under the controller: rank 0 writes a probe naming the
  attempt (temp, fsync, rename); every other rank must read that probe within the timeout. With
  `SHARED_PATHS` set, `output_dir` must also lie under one of them (else a config error, 78: no
  restart changes where it points). A data-parallel gang with a checkpoint store needs no shared
  directory: whether it has one is decided once the gang has met (`defer_shared`, `sees_probe`).
- `free-space`, once the model is built: room in `output_dir`'s filesystem for two more checkpoints
  of the gang, each rank's the larger of its parameters' bytes (with the weights-only copy) and its
  last committed checkpoint.

A probe names an attempt, not a start: a probe that an earlier job of the same name and attempt
left in a node-local directory would pass the check there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from respawn_protocol import contract, safefs
from respawn_protocol.contract import PreflightCheck
from respawn_protocol.layout import checkpoint_root, network_root, rank_dir
from respawn_protocol.meta import MetaError, read_meta
from trainer_image.checkpoint.commit import FILE_MODE, atomic_write_bytes, make_dirs
from trainer_image.config import ConfigError, TrainerConfig

if TYPE_CHECKING:
    from trainer_image.training.backend import Backend  # MindSpore: imported by the caller already
    from trainer_image.training.gang import Gang

log = logging.getLogger("trainer_image.preflight")

PROBE = ".respawn-preflight.json"  # rank 0's, replaced by each attempt
# A gang's pods can start minutes apart (image pulls, scheduling): rank 0 writes its probe first thing.
DEFAULT_TIMEOUT = 300.0
DEFAULT_CHECKPOINTS = 2
POLL = 0.2


class PreflightError(RuntimeError):
    """The environment failed a check; `str()` is the termination message."""

    def __init__(self, check: PreflightCheck, detail: str) -> None:
        super().__init__(contract.preflight_message(check, detail))
        self.check = check


@dataclass(frozen=True)
class Settings:
    timeout: float = DEFAULT_TIMEOUT  # seconds a rank waits for rank 0's probe
    checkpoints: int = DEFAULT_CHECKPOINTS  # checkpoints of room required; 0: no space check

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        try:
            timeout = float(environ.get(contract.PREFLIGHT_TIMEOUT) or DEFAULT_TIMEOUT)
            checkpoints = int(environ.get(contract.PREFLIGHT_CHECKPOINTS) or DEFAULT_CHECKPOINTS)
        except ValueError as e:
            raise ConfigError(f"{contract.PREFLIGHT_TIMEOUT}/{contract.PREFLIGHT_CHECKPOINTS}: {e}") from e
        if timeout <= 0 or checkpoints < 0:
            raise ConfigError(
                f"{contract.PREFLIGHT_TIMEOUT} must be > 0 and {contract.PREFLIGHT_CHECKPOINTS} >= 0"
            )
        return cls(timeout, checkpoints)


def check_directory(
    output_dir: Path,
    *,
    rank: int,
    world_size: int,
    attempt: int | None,
    environ: Mapping[str, str],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    defer_shared: bool = False,
) -> None:
    """`writable`, then `shared-directory`: before the slow imports, so a bad disk fails in a second.
    `defer_shared` (a data-parallel gang with a checkpoint store): rank 0 writes its probe and the
    others do not wait for it; once the gang has met, `sees_probe` tells whether the directory is
    shared, and an unshared one resumes from the store (storesync.py)."""
    settings = Settings.from_env(environ)
    if world_size > 1:
        _check_shared_paths(output_dir, environ.get(contract.SHARED_PATHS, ""))
    _check_writable(output_dir, rank)
    if world_size == 1:
        return
    if attempt is None:
        log.info(
            "no %s: the shared-directory check needs the controller's attempt; skipped", contract.ATTEMPT
        )
        return
    if rank == 0:
        _write_probe(output_dir, attempt=attempt, world_size=world_size)
    elif not defer_shared:
        _await_probe(
            output_dir,
            attempt=attempt,
            world_size=world_size,
            timeout=settings.timeout,
            clock=clock,
            sleep=sleep,
            store=bool(environ.get(contract.STORE_ENDPOINT)),
        )


def _check_shared_paths(output_dir: Path, shared_paths: str) -> None:
    roots = [Path(os.path.realpath(p.strip())) for p in shared_paths.split(",") if p.strip()]
    real = Path(os.path.realpath(output_dir))
    if roots and not any(real == root or root in real.parents for root in roots):
        raise ConfigError(
            f"output_dir {output_dir} is not under {contract.SHARED_PATHS}={shared_paths}: "
            "ranks on other nodes would not see its checkpoints"
        )


def _check_writable(output_dir: Path, rank: int) -> None:
    # One name per rank, removed first: a crash between create and remove leaves at most one, and
    # whatever is there (a link included) is replaced, never followed.
    path = output_dir / f".respawn-preflight-rank_{rank}"
    try:
        make_dirs(output_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.write(fd, b"respawn pre-flight\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
    except OSError as e:
        raise PreflightError(PreflightCheck.WRITABLE, f"cannot write {path}: {e.strerror or e}") from e


def _write_probe(output_dir: Path, *, attempt: int, world_size: int) -> None:
    body = {"attempt": attempt, "world_size": world_size, "host": socket.gethostname(), "time": time.time()}
    try:
        atomic_write_bytes(output_dir / PROBE, (json.dumps(body) + "\n").encode())
    except OSError as e:
        raise PreflightError(
            PreflightCheck.WRITABLE, f"cannot write {output_dir / PROBE}: {e.strerror or e}"
        ) from e


def sees_probe(output_dir: Path, *, attempt: int, world_size: int) -> bool:
    """Whether rank 0's probe of this attempt is in `output_dir` (looked at once: the caller knows
    rank 0 has written it)."""
    probe = _read_probe(output_dir)
    return probe is not None and probe.get("attempt") == attempt and probe.get("world_size") == world_size


def _read_probe(output_dir: Path) -> dict[str, object] | None:
    try:
        raw = json.loads(safefs.read_regular(output_dir / PROBE, root=output_dir, limit=4096))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:  # UnsafeFile is a ValueError; a torn probe never exists (rename)
        log.warning("unreadable %s: %s", output_dir / PROBE, e)
        return None
    return raw if isinstance(raw, dict) else None


def _await_probe(
    output_dir: Path,
    *,
    attempt: int,
    world_size: int,
    timeout: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    store: bool = False,
) -> None:
    deadline = clock() + timeout
    while True:
        probe = _read_probe(output_dir)
        if probe is not None and probe.get("attempt") == attempt and probe.get("world_size") == world_size:
            log.info("pre-flight: output_dir %s is rank 0's (probe of attempt %d)", output_dir, attempt)
            return
        if clock() >= deadline:
            break
        sleep(POLL)
    seen = "none there"
    if probe is not None:
        got = (probe.get("attempt"), probe.get("world_size"), probe.get("host"))
        seen = "found attempt {}'s, {} ranks, host {}".format(*got)
    raise PreflightError(
        PreflightCheck.SHARED,
        f"no probe of attempt {attempt} from rank 0 in {output_dir} within {timeout:g} s ({seen}): "
        "this rank does not see the directory rank 0 writes"
        + (
            "; a checkpointStore replaces a shared output directory only for a data-parallel gang "
            "(use_parallel: True), whose ranks agree on the store's step"
            if store
            else ""
        ),
    )


def checkpoint_bytes(parameter_bytes: int, output_dir: Path, rank: int) -> int:
    """What one checkpoint of this rank takes: the larger of `parameter_bytes` (the caller's
    estimate) and the last checkpoint this rank committed, with its weights-only copy."""
    try:
        meta = read_meta(rank_dir(checkpoint_root(output_dir), rank))
    except MetaError:
        meta = None
    if meta is None or not meta.checkpoints:
        return parameter_bytes
    last = meta.checkpoints[-1]
    size = last.size
    if last.network_file:
        with contextlib.suppress(OSError):  # pruned or never written: the estimate covers it
            size += os.stat(rank_dir(network_root(output_dir), rank) / last.network_file).st_size
    return max(parameter_bytes, size)


def check_space(
    output_dir: Path,
    *,
    per_rank: int,
    ranks: int,
    environ: Mapping[str, str],
    free: Callable[[Path], int] | None = None,
) -> None:
    """`free-space`: room for the configured number of checkpoints of `ranks` ranks of `per_rank` bytes."""
    count = Settings.from_env(environ).checkpoints
    if count == 0:
        return
    need = count * ranks * per_rank
    available = (free or _free_bytes)(output_dir)
    if available < need:
        raise PreflightError(
            PreflightCheck.FREE_SPACE,
            f"{output_dir} has {_mib(available)} free; {count} checkpoints of {ranks} rank(s) "
            f"at {_mib(per_rank)} each need {_mib(need)}",
        )
    log.info(
        "pre-flight: %s free in %s, %d checkpoints need %s", _mib(available), output_dir, count, _mib(need)
    )


def check_model_space(
    config: TrainerConfig, gang: Gang, backend: Backend, saved: set[str], *, shared: bool = True
) -> None:
    """Pre-flight `free-space`: room for checkpoints of every rank where they share the directory,
    else of this rank (the ranks a pod's supervisor starts on one disk are not counted)."""
    monitor = config.checkpoint_monitor
    if monitor is None:
        return  # nothing will be saved
    sizes = {p.name: int(p.nbytes) for p in backend.cell.get_parameters()}
    estimate = sum(sizes[n] for n in saved)
    if monitor.save_network_params:
        estimate += sum(sizes[n] for n in saved & backend.network_names)
    output_dir = Path(config.output_dir)
    per_rank = checkpoint_bytes(estimate, output_dir, gang.rank)
    ranks = gang.world_size if shared else 1
    check_space(output_dir, per_rank=per_rank, ranks=ranks, environ=os.environ)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def say(message: str, environ: Mapping[str, str]) -> None:
    """Write `message` to the container's termination log, if it has one; never create it."""
    path = Path(environ.get(contract.TERMINATION_LOG) or contract.TERMINATION_LOG_DEFAULT)
    if not path.exists():
        return
    try:
        path.write_text(message + "\n")
    except OSError as e:
        log.warning("cannot write %s: %s", path, e)
