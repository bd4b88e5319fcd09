"""`python -m trainer_image.wrap -- COMMAND [ARGS...]`: run a foreign trainer (MindFormers' own) as one
rank of a TrainingJob and tell the controller about its checkpoints.

The controller learns of commits only from the trainers' reports on their pods
(respawn_protocol/report.py); MindFormers knows nothing of them. This wrapper runs the command as its
child and watches the rank's `rank_N/meta.json` under `RESPAWN_JOB_CHECKPOINT_DIR` (the directory
MindFormers writes when its `output_dir` is the job's output directory). Each new `last_ckpt_file`
is reported as a commit through the trainer's own `Reporter`, with the absolute step and epoch that
MindFormers recorded in the file (`trainer_image/foreign.py`: meta.json's `last_step` counts within
an epoch and restarts after MindFormers' own resume). A file whose step cannot be read is not
reported (a warning says so), nor is the file meta.json names when the wrapper starts (an earlier
attempt's, reported by that attempt). What is not reported: progress between checkpoints and start-up
timings (MindFormers does not publish them), and the attempt is the controller's `RESPAWN_ATTEMPT`
of this pod, not one recorded by MindFormers.

MindFormers writes meta.json with a rename (`os.replace`), after the checkpoint file: a meta.json
seen here names a file that is complete. The watch is a poll of meta.json's identity (inode, size,
mtime) every `RESPAWN_WRAP_POLL` seconds (default 0.5), which works on any shared file system.

With `RESPAWN_RANKS_PER_POD` n > 1 (the command is msrun with n local workers) the pod's n ranks
are watched and reported, each under its own key. With one rank the child's `RANK_ID` defaults to
`RESPAWN_RANK` (MindFormers' rank without a communication group).
SIGTERM and SIGINT are passed to the child; the wrapper exits with the child's code (128 + N when a
signal N killed it). The child gets `PR_SET_PDEATHSIG`: a wrapper killed outright takes it along.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

from respawn_protocol import contract, safefs
from respawn_protocol.meta import MetaError, meta_path, read_meta
from trainer_image.foreign import UnreadableCheckpoint, read_progress
from trainer_image.training.parallel import _die_with_parent
from trainer_image.training.report import Reporter

log = logging.getLogger("trainer_image.wrap")
POLL_ENV = "RESPAWN_WRAP_POLL"
DEFAULT_POLL = 0.5
_FORWARDED = (signal.SIGTERM, signal.SIGINT)
USAGE = "usage: python -m trainer_image.wrap -- COMMAND [ARGS...]"


def _int_env(environ: Mapping[str, str], name: str, default: int | None) -> int | None:
    value = environ.get(name)
    return int(value) if value not in (None, "") else default


class MetaWatch:
    """Reports each checkpoint that a rank folder's meta.json newly names."""

    def __init__(self, rank_dir: Path, reporter: Reporter, attempt: int | None) -> None:
        self.rank_dir = rank_dir
        self.reporter = reporter
        self.attempt = attempt
        self._seen: tuple[int, int, int] | None = None
        self.reported: str | None = None  # the last file reported

    def prime(self) -> None:
        """Take what meta.json names before the child starts as known: an earlier attempt wrote it
        (and reported it), so it is not reported again as this attempt's commit."""
        self.check(report=False)

    def check(self, *, report: bool = True) -> None:
        """Look once; report a new commit. Never raises for what is on disk."""
        try:
            st = safefs.lstat_regular(meta_path(self.rank_dir))
        except (OSError, safefs.UnsafeFile):
            return
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self._seen:
            return
        self._seen = identity
        try:
            meta = read_meta(self.rank_dir)
        except MetaError as e:
            log.warning("unreadable meta.json: %s", e)
            return
        if meta is None or meta.last_ckpt_file == self.reported:
            return
        if not report:
            self.reported = meta.last_ckpt_file
            return
        self._report(meta.last_ckpt_file, meta.last_epoch)

    def _report(self, name: str, meta_epoch: int) -> None:
        try:
            progress = read_progress(self.rank_dir / name, root=self.rank_dir)
        except (OSError, safefs.UnsafeFile, UnreadableCheckpoint) as e:
            log.warning("meta.json names %s, whose step cannot be read (%s): not reported", name, e)
            self.reported = name
            return
        epoch = progress.epoch if progress.epoch is not None else meta_epoch
        self.reporter.committed(step=progress.step, epoch=epoch, file=name, attempt=self.attempt)
        self.reported = name
        log.info("reported commit %s (step %d, epoch %d)", name, progress.step, epoch)


def _watch(watches: Sequence[MetaWatch], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        for watch in watches:
            watch.check()


def pod_ranks(environ: Mapping[str, str]) -> range:
    """The ranks this pod trains: `RESPAWN_RANK` and, with `RESPAWN_RANKS_PER_POD` n > 1 (msrun's
    local workers), the n - 1 after it."""
    first = _int_env(environ, contract.RANK, 0) or 0
    return range(first, first + max(_int_env(environ, contract.RANKS_PER_POD, 1) or 1, 1))


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    env = dict(environ)
    if len(pod_ranks(environ)) == 1:  # several ranks: msrun gives each its own
        env.setdefault("RANK_ID", environ.get(contract.RANK, "0"))
    return env


def _watches(environ: Mapping[str, str], reporters: Mapping[int, Reporter]) -> list[MetaWatch]:
    checkpoints = environ.get(contract.JOB_CHECKPOINT_DIR)
    if not checkpoints:
        log.warning("%s is not set: no checkpoint is reported", contract.JOB_CHECKPOINT_DIR)
        return []
    attempt = _int_env(environ, contract.ATTEMPT, None)
    return [
        MetaWatch(Path(checkpoints) / f"rank_{r}", reporter, attempt) for r, reporter in reporters.items()
    ]


def run(
    command: Sequence[str], environ: Mapping[str, str], reporters: Mapping[int, Reporter] | None = None
) -> int:
    """Run `command` to its end under the watch; its exit code (128 + N for signal N). `reporters`:
    one per rank of the pod (from `environ`) unless given."""
    attempt = _int_env(environ, contract.ATTEMPT, None)
    if reporters is None:
        reporters = {r: Reporter.from_env(environ, rank=r, attempt=attempt) for r in pod_ranks(environ)}
    watches = _watches(environ, reporters)
    for watch in watches:
        watch.prime()
    proc = subprocess.Popen(list(command), env=child_env(environ), preexec_fn=_die_with_parent)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    stop = threading.Event()
    interval = float(environ.get(POLL_ENV) or DEFAULT_POLL)
    watcher = threading.Thread(target=_watch, args=(watches, stop, interval), name="meta-watch", daemon=True)
    watcher.start()
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop.set()
        watcher.join()
        for watch in watches:
            watch.check()  # the child's last commits, written just before it exited
        for reporter in reporters.values():
            reporter.close()
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--"]:
        args = args[1:]
    if not args or args[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return int(contract.ExitCode.CONFIG_ERROR)
    try:
        return run(args, os.environ)
    except (OSError, ValueError) as e:
        log.error("could not run %s: %s", args[0], e)
        return int(contract.ExitCode.CONFIG_ERROR)


if __name__ == "__main__":
    sys.exit(main())
