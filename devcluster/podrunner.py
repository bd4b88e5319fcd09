"""Launch and kill one container as a local process.

The process is started through the exec shim (devcluster.shim) in a new session, so it leads
its own process group: pid == pgid, and signalling the group reaches whatever the container
forked. When the container's main process exits, the rest of its group is SIGKILLed, as a
runtime tears down a dead container.

A waiter thread per process reaps it and reports the exit through a callback; nothing polls.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devcluster.shim import START_ERROR_EXIT
from devcluster.statedir import PidRecord, StateDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class LaunchSpec:
    """What the shim does before exec'ing `argv`."""

    argv: list[str]
    env: dict[str, str]
    cwd: str | None = None
    hostname: str | None = None
    mounts: list[Mount] = field(default_factory=list)
    hosts_file: str | None = None


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int
    signal: int | None
    finished_at: datetime.datetime
    start_error: str | None = None


def exit_info_from_returncode(returncode: int, *, start_error: str | None = None) -> ExitInfo:
    """A shell's convention, which is also the runtime's: death by signal N is exit code 128+N."""
    now = datetime.datetime.now(datetime.UTC)
    if returncode < 0:
        return ExitInfo(128 - returncode, -returncode, now, start_error)
    return ExitInfo(returncode, None, now, start_error)


class ContainerProcess:
    """A started container process. `exit` is set (once) by the waiter thread."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        error_fd: int,
        record: PidRecord,
        pid_path: Path,
        on_exit: Callable[[ContainerProcess], None],
    ) -> None:
        self._popen = popen
        self._error_fd = error_fd
        self.record = record
        self.pid_path = pid_path
        self.started_at = datetime.datetime.now(datetime.UTC)
        self.exit: ExitInfo | None = None
        # Set once the shim has exec'd the command (or failed to): only then is the container running.
        self.exec_done = threading.Event()
        self.start_error: str | None = None
        self._on_exit = on_exit
        self._waiter = threading.Thread(target=self._wait, name=f"wait-{popen.pid}", daemon=True)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @classmethod
    def launch(
        cls,
        *,
        spec: LaunchSpec,
        pod_dir: Path,
        container: str,
        state: StateDir,
        identity: dict[str, str],
        on_exit: Callable[[ContainerProcess], None],
        python: str = sys.executable,
    ) -> ContainerProcess:
        """Start the shim; `identity` holds namespace, pod, uid and node for the pid record."""
        spec_path = pod_dir / f"{container}.spec.json"
        body = asdict(spec) | {"parent_pid": os.getpid()}
        spec_path.write_text(json.dumps(body, indent=1))
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            with open(pod_dir / f"{container}.log", "ab") as log_file:
                popen = subprocess.Popen(
                    [python, "-m", "devcluster.shim", str(spec_path), str(write_fd)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    env={"PYTHONPATH": _package_root(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        record = PidRecord(pid=popen.pid, start_time=_start_time(popen.pid), container=container, **identity)
        pid_path = state.write_pid(pod_dir, record)
        proc = cls(popen, read_fd, record, pid_path, on_exit)
        proc._waiter.start()
        return proc

    def signal_group(self, sig: int) -> None:
        """Signal the whole container (its process group) unless it is already gone."""
        if self.exit is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)

    def _wait(self) -> None:
        chunks = []
        while chunk := os.read(self._error_fd, 4096):
            chunks.append(chunk)
        os.close(self._error_fd)
        if chunks:
            try:
                self.start_error = json.loads(b"".join(chunks))["error"]
            except (ValueError, KeyError):
                self.start_error = b"".join(chunks).decode(errors="replace")
        else:
            self.started_at = datetime.datetime.now(datetime.UTC)
        self.exec_done.set()
        returncode = self._popen.wait()
        if self.start_error is not None:
            returncode = START_ERROR_EXIT
        self._reap_group()
        self.exit = exit_info_from_returncode(returncode, start_error=self.start_error)
        try:
            self._on_exit(self)
        except Exception:
            log.exception("exit callback for pid %d failed", self.pid)

    def _reap_group(self) -> None:
        """The main process is gone: kill what it left behind, then drop the pid record."""
        deadline = time.monotonic() + 10
        while self.record.kill_group(signal.SIGKILL):
            if time.monotonic() > deadline:
                log.warning("processes of pgid %d survive SIGKILL; keeping %s", self.pid, self.pid_path)
                return
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()


def _start_time(pid: int) -> int:
    # The child is not reaped before the waiter starts, so its /proc entry exists (maybe a zombie).
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[19])


def _package_root() -> str:
    """Where `devcluster` is importable from, so the shim works whatever the agent's cwd is."""
    return str(Path(__file__).resolve().parent.parent)
