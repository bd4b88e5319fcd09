"""A whole local cluster in one object: control plane, CRDs from deploy/, and the node agent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from kubernetes import client, config

from devcluster.assets import REPO_ROOT
from devcluster.controlplane import ControlPlane
from devcluster.crds import apply_crds


class LocalCluster:
    def __init__(
        self,
        *,
        workdir: Path,
        nodes: tuple[str, ...] = ("node-0", "node-1"),
        controller_manager: bool = False,
    ) -> None:
        self.workdir = workdir.resolve()
        self.nodes = nodes
        self.control_plane = ControlPlane(
            workdir=self.workdir / "controlplane", with_controller_manager=controller_manager
        )
        self.agent_state_dir = self.workdir / "agent"
        self.agent_log_path = self.workdir / "agent.log"
        self.crds: list[str] = []
        self._agent: subprocess.Popen[bytes] | None = None
        self._agent_log: IO[bytes] | None = None

    @property
    def kubeconfig_path(self) -> Path:
        return self.control_plane.kubeconfig_path

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig_path))

    def start(self, *, timeout: float = 60.0) -> LocalCluster:
        try:
            self.control_plane.start()
            with self.api_client() as api:
                self.crds = apply_crds(api, REPO_ROOT / "deploy")
                self._start_agent()
                self._wait_nodes_ready(api, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def agent_alive(self) -> bool:
        return self._agent is not None and self._agent.poll() is None

    def stop(self) -> None:
        if self._agent is not None and self._agent.poll() is None:
            self._agent.terminate()
            try:
                self._agent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._agent.kill()
                self._agent.wait()
        if self._agent_log is not None:
            self._agent_log.close()
        self.control_plane.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _start_agent(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._agent_log = self.agent_log_path.open("ab")
        self._agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devcluster",
                "agent",
                "--kubeconfig",
                str(self.kubeconfig_path),
                "--state-dir",
                str(self.agent_state_dir),
                "--nodes",
                ",".join(self.nodes),
            ],
            stdout=self._agent_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def _wait_nodes_ready(self, api: client.ApiClient, timeout: float) -> None:
        core = client.CoreV1Api(api)
        deadline = time.monotonic() + timeout
        while True:
            if not self.agent_alive():
                raise RuntimeError(f"node agent exited; see {self.agent_log_path}")
            ready = {
                n.metadata.name
                for n in core.list_node().items
                if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])
            }
            if set(self.nodes) <= ready:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nodes not Ready after {timeout:.0f}s: {sorted(set(self.nodes) - ready)}")
            time.sleep(0.2)
