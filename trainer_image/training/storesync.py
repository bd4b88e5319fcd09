"""The checkpoint store in a run (trainer_image/checkpoint/store/): whether the gang shares its output
directory, predownload before the start resolves (shared) or the store as the resolver (not shared),
the checkpointer with an uploader fed by every local commit, and its bounded flush at the end.

The store is used exactly when RESPAWN_STORE_ENDPOINT is set. With a shared output directory nothing
here stops training: a store that cannot be used is logged (ERROR) and reported in the rank's `upload`
report, and the run goes on with its local checkpoints. Without one the store is the only record of
the other ranks' steps, so a start that cannot read it fails (pre-flight `checkpoint-store`, retried
by the controller) rather than train from random init over a job that has checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from respawn_protocol.contract import PreflightCheck
from respawn_protocol.layout import StepKey, checkpoint_root, rank_dir, rank_prefix
from respawn_protocol.meta import Record
from respawn_protocol.report import Upload
from respawn_protocol.resolution import Resolution
from trainer_image.checkpoint.checkpointer import Checkpointer, SaveBackend
from trainer_image.checkpoint.merge import STRATEGY_DIR, strategy_path
from trainer_image.checkpoint.store.client import Settings, StoreError
from trainer_image.checkpoint.store.companions import Companions
from trainer_image.checkpoint.store.download import local_newest, predownload
from trainer_image.checkpoint.store.resolver import StoreResolver
from trainer_image.checkpoint.store.upload import Uploader
from trainer_image.config import ConfigError, TrainerConfig
from trainer_image.training import preflight
from trainer_image.training.gang import Gang
from trainer_image.training.preflight import PreflightError
from trainer_image.training.report import Reporter
from trainer_image.training.resume import lineage_parent

log = logging.getLogger("trainer_image.store")
# At a clean end or a stop, how long pending uploads may hold up the exit (the pod's grace period is
# 30 s by default, and the stop's own save comes first).
FLUSH_ENV = "RESPAWN_STORE_FLUSH_SECONDS"
DEFAULT_FLUSH = 20.0
PEERS_WAIT = 120.0  # ranks without collectives: how long to wait for the others' predownloads


def resumes_own(config: TrainerConfig, gang: Gang) -> bool:
    """Whether the start may resume from output_dir/checkpoint/, which the store mirrors."""
    own = checkpoint_root(Path(config.output_dir)).resolve()
    return gang.job_checkpoint_dir is not None or (
        bool(config.load_checkpoint) and Path(config.load_checkpoint).resolve() == own
    )


def output_shared(environ: Mapping[str, str], config: TrainerConfig, gang: Gang) -> bool:
    """Whether every rank sees rank 0's output directory. Asked of a data-parallel gang with a store
    under the controller (the pre-flight deferred the question, preflight.check_directory); anywhere
    else the pre-flight has already required it. A collective: every rank answers the same."""
    if Settings.from_env(environ) is None or gang.cluster is None or gang.attempt is None:
        return True
    sees = preflight.sees_probe(Path(config.output_dir), attempt=gang.attempt, world_size=gang.world_size)
    shared = gang.cluster.barrier(sees)
    if shared:
        return True
    if config.remove_redundancy:
        raise ConfigError(
            "remove_redundancy: each rank's checkpoint holds only its share, so a resume reads every "
            "rank's file; the ranks do not share the output directory"
        )
    log.info(
        "store: the output directory is not shared by every rank (%s): the gang resumes from the store",
        "this rank sees rank 0's probe" if sees else "this rank does not see rank 0's probe",
    )
    return False


def before_resume(
    environ: Mapping[str, str],
    config: TrainerConfig,
    gang: Gang,
    reporter: Reporter,
    *,
    shared: bool = True,
    companions: Companions | None = None,
) -> StoreResolver | None:
    """Shared: predownload, then wait until every rank has (the local resolution reads their
    folders); None. Not shared: the resolver for the job's own directory (close it after the load)."""
    settings = Settings.from_env(environ)
    if settings is None or not resumes_own(config, gang):
        return None
    output_dir = Path(config.output_dir)
    if not shared:
        try:
            return StoreResolver(settings, output_dir=output_dir, rank=gang.rank, world_size=gang.world_size)
        except StoreError as e:
            raise PreflightError(
                PreflightCheck.STORE,
                f"{e}; this rank's output directory is not shared with the gang, so the store is "
                "the only record of the other ranks' checkpoints",
            ) from e
    key: StepKey | None = None
    try:
        key = predownload(
            settings, output_dir=output_dir, rank=gang.rank, world_size=gang.world_size, companions=companions
        )
    except StoreError as e:
        log.error("store: no predownload, resolving from local disk only: %s", e)
        reporter.uploaded(Upload(failures=1, error=f"predownload: {e}"))
    except Exception as e:  # the gang must still meet at the barrier below
        log.exception("store: predownload failed, resolving from local disk only: %s", e)
        reporter.uploaded(Upload(failures=1, error=f"predownload: {e}"))
    if gang.barrier is not None:
        gang.barrier(True)
    elif key is not None and gang.world_size > 1:
        _await_peers(output_dir, gang.world_size, key)
    return None


def _await_peers(output_dir: Path, world_size: int, key: StepKey) -> None:
    """Ranks that train alone have no collective to meet at: poll until the step is complete
    locally on every rank, or give up after PEERS_WAIT (the resolution then takes what is there)."""
    import time

    deadline = time.monotonic() + PEERS_WAIT
    while (local := local_newest(output_dir, world_size)) is None or local < key:
        if time.monotonic() > deadline:
            log.warning("store: step %s is not complete locally on every rank after %.0fs", key, PEERS_WAIT)
            return
        time.sleep(0.2)


def uploader(
    environ: Mapping[str, str],
    config: TrainerConfig,
    gang: Gang,
    reporter: Reporter,
    companions: Companions | None = None,
) -> Uploader | None:
    """The rank's uploader (None without a store or a CheckpointMonitor), with this gang's strategy
    file to send (a gang of another size merges this gang's steps with it: download.py)."""
    settings, monitor = Settings.from_env(environ), config.checkpoint_monitor
    if settings is None or monitor is None:
        return None
    up = Uploader(
        settings,
        rank=gang.rank,
        world_size=gang.world_size,
        base=rank_prefix(monitor.prefix, gang.rank),
        keep_max=monitor.keep_checkpoint_max,
        on_change=reporter.uploaded,
        companions=companions,
    )
    strategy = strategy_path(Path(config.output_dir) / STRATEGY_DIR, gang.rank)
    if gang.cluster is not None and strategy.is_file():  # written by this start (loop._resume)
        up.share(settings.strategy_key(gang.world_size, gang.rank), strategy.read_bytes())
    return up


def announce(
    reporter: Reporter, up: Uploader | None, output_dir: Path, rank: int
) -> Callable[[Record], None]:
    """The checkpointer's `on_commit`: the controller's report, then the upload."""
    directory = rank_dir(checkpoint_root(output_dir), rank)

    def on_commit(r: Record) -> None:
        reporter.committed(step=r.global_step, epoch=r.epoch, file=r.file, attempt=r.attempt)
        if up is not None:
            up.committed(r, directory / r.file)

    return on_commit


def checkpointer(
    config: TrainerConfig,
    gang: Gang,
    backend: SaveBackend,
    resolution: Resolution,
    reporter: Reporter,
    uploader: Uploader | None,
) -> Checkpointer | None:
    """The commit protocol for this rank (None without a CheckpointMonitor), each commit reported and
    uploaded (with a store; the newest commit an earlier start left is sent again)."""
    monitor = config.checkpoint_monitor
    if monitor is None:
        return None
    weights_only = config.resume_training is False
    made = Checkpointer(
        backend=backend,
        monitor=monitor,
        output_dir=Path(config.output_dir),
        rank=gang.rank,
        world_size=gang.world_size,
        resumed_key=None if resolution.random_init or weights_only else resolution.key,
        attempt=gang.attempt,
        parent=None if weights_only else lineage_parent(resolution),
        on_commit=announce(reporter, uploader, Path(config.output_dir), gang.rank),
    )
    resend_newest(uploader, made)
    return made


def resend_newest(uploader: Uploader | None, checkpointer: Checkpointer) -> None:
    """The newest commit an earlier start left, announced again: the store may lack it (an exit
    before its upload); one the store holds is not sent twice."""
    if uploader is not None and checkpointer.history:
        newest = checkpointer.history[-1]
        uploader.committed(newest, checkpointer.dir / newest.file)


def close(up: Uploader | None, environ: Mapping[str, str]) -> None:
    if up is None:
        return
    try:
        timeout = float(environ.get(FLUSH_ENV) or DEFAULT_FLUSH)
    except ValueError:
        timeout = DEFAULT_FLUSH
    up.close(timeout)
