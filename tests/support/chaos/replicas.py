"""Controller replicas as subprocesses with leader election, replaced when one exits."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
from pathlib import Path

from devcluster.controlplane import free_port


class Replicas:
    """Two controller replicas as subprocesses; one that exits (killed, lost its lease) is replaced."""

    def __init__(self, kubeconfig: Path, namespace: str, shared: Path, logdir: Path, count: int = 2) -> None:
        self.kubeconfig, self.namespace, self.shared, self.logdir, self.count = (
            kubeconfig,
            namespace,
            shared,
            logdir,
            count,
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.exits: list[tuple[str, int]] = []
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="replicas", daemon=True)

    def _spawn(self) -> None:
        identity = f"replica-{next(self._ids)}"
        log = (self.logdir / f"controller-{identity}.log").open("ab")
        self.procs[identity] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controller",
                "--kubeconfig",
                str(self.kubeconfig),
                "--namespace",
                self.namespace,
                "--health-port",
                str(free_port()),
                "--health-host",
                "127.0.0.1",
                "--lease-namespace",
                self.namespace,
                "--lease-duration",
                "3",
                "--renew-deadline",
                "2",
                "--retry-period",
                "0.5",
                "--shared-root",
                str(self.shared),
                "--identity",
                identity,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def start(self) -> None:
        with self._lock:
            for _ in range(self.count):
                self._spawn()
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                for identity, proc in list(self.procs.items()):
                    if proc.poll() is not None:
                        self.exits.append((identity, proc.returncode))
                        del self.procs[identity]
                while len(self.procs) < self.count:
                    self._spawn()

    def kill(self, identity: str) -> bool:
        with self._lock:
            proc = self.procs.get(identity)
            if proc is None or proc.poll() is not None:
                return False
            proc.send_signal(signal.SIGKILL)
            return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=10)
        with self._lock:
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in self.procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
