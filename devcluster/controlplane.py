"""A real, minimal Kubernetes control plane on loopback: etcd + kube-apiserver (and, on request,
kube-controller-manager), the way controller-runtime's envtest provides one.

The API server runs with TLS, client-certificate authentication for the admin,
service-account token signing and `--authorization-mode=RBAC`, so tests see the same
validation, conflicts, watch expiry and authorization as on a real cluster.

Every child gets PR_SET_PDEATHSIG, so they die with the process that started them even if
it is killed without a chance to clean up.
"""

from __future__ import annotations

import base64
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

import yaml

from devcluster import assets, pki

SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ControlPlane:
    """etcd + kube-apiserver under `workdir`; `start()`, then use `kubeconfig_path`."""

    def __init__(
        self,
        *,
        workdir: Path,
        assets_dir: Path | None = None,
        with_controller_manager: bool = False,
        apiserver_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self._assets_dir = assets_dir
        self._with_kcm = with_controller_manager
        self._extra_args = apiserver_args
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.pki_dir = self.workdir / "pki"
        self.kubeconfig_path = self.workdir / "admin.kubeconfig"
        self.server_url = ""
        self.etcd_url = ""
        self._ca: pki.CertificateAuthority | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> ControlPlane:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        extra = (assets.CONTROLLER_MANAGER,) if self._with_kcm else ()
        binaries = self._assets_dir or assets.ensure_assets(extra=extra)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        self.etcd_url = f"http://127.0.0.1:{free_port()}"
        peer_url = f"http://127.0.0.1:{free_port()}"
        self._spawn(
            "etcd",
            [
                str(binaries / "etcd"),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                # Test data is disposable; fsync would dominate every write on a shared disk.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_http(f"{self.etcd_url}/health", timeout, ssl_context=None)
        self.start_apiserver(timeout=timeout, binaries=binaries)
        if self._with_kcm:
            self.start_controller_manager(binaries=binaries)

    def start_apiserver(self, *, timeout: float = 90.0, binaries: Path | None = None) -> None:
        """Start (or restart, after `stop_apiserver`) kube-apiserver on the same port and etcd."""
        binaries = binaries or self._assets_dir or assets.ensure_assets()
        port = int(self.server_url.rsplit(":", 1)[1]) if self.server_url else free_port()
        self.server_url = f"https://127.0.0.1:{port}"
        p = self.pki_dir
        self._spawn(
            "kube-apiserver",
            [
                str(binaries / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={p}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--profiling=false",
                # The `kubernetes` Service endpoints may not point at loopback; nothing here needs them.
                "--endpoint-reconciler-type=none",
                *self._extra_args,
            ],
        )
        self._wait_http(f"{self.server_url}/readyz", timeout, ssl_context=self._admin_ssl_context())
        self.write_kubeconfig(self.kubeconfig_path, user="admin", groups=("system:masters",))

    def stop_apiserver(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self._terminate("kube-apiserver", sig)

    def start_controller_manager(self, *, binaries: Path | None = None) -> None:
        binaries = binaries or self._assets_dir or assets.ensure_assets(extra=(assets.CONTROLLER_MANAGER,))
        kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self.write_kubeconfig(kubeconfig, user="system:kube-controller-manager")
        p = self.pki_dir
        self._spawn(
            "kube-controller-manager",
            [
                str(binaries / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--controllers=*",
            ],
        )

    def stop(self) -> None:
        for name in reversed(list(self._procs)):
            self._terminate(name, signal.SIGTERM)
        for log in self._logs:
            log.close()
        self._logs.clear()

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs.values()]

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- credentials -------------------------------------------------------------------------

    def write_kubeconfig(
        self, path: Path, *, user: str, groups: tuple[str, ...] = (), token: str | None = None
    ) -> Path:
        """A kubeconfig for `user` (client certificate in `groups`), or for a bearer `token`."""
        credentials: dict[str, str]
        if token is not None:
            credentials = {"token": token}
        else:
            pair = self._authority().issue(user, organizations=groups)
            credentials = {
                "client-certificate-data": base64.b64encode(pair.cert_pem).decode(),
                "client-key-data": base64.b64encode(pair.key_pem).decode(),
            }
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "devcluster",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority-data": base64.b64encode(self._authority().cert_pem).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": user}}],
            "current-context": "devcluster",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _authority(self) -> pki.CertificateAuthority:
        if self._ca is None:
            raise ControlPlaneError("control plane not started")
        return self._ca

    def _write_pki(self) -> None:
        self.pki_dir.mkdir(parents=True, exist_ok=True)
        self._ca = pki.CertificateAuthority()
        (self.pki_dir / "ca.crt").write_bytes(self._ca.cert_pem)
        serving = self._ca.issue(
            "kube-apiserver",
            server_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            server_ips=("127.0.0.1", "10.0.0.1"),
        )
        serving.write(self.pki_dir, "apiserver")
        admin = self._ca.issue("admin", organizations=("system:masters",))
        admin.write(self.pki_dir, "admin")
        private, public = pki.service_account_key()
        (self.pki_dir / "sa.key").write_bytes(private)
        (self.pki_dir / "sa.key").chmod(0o600)
        (self.pki_dir / "sa.pub").write_bytes(public)

    def _admin_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / "admin.crt"), str(self.pki_dir / "admin.key"))
        return ctx

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log_dir = self.workdir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        self._logs.append(log)
        self._procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
            cwd=self.workdir,
        )

    def _terminate(self, name: str, sig: signal.Signals) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _wait_http(self, url: str, timeout: float, *, ssl_context: ssl.SSLContext | None) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no attempt"
        name = next(reversed(self._procs))
        while time.monotonic() < deadline:
            proc = self._procs[name]
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode}; see {self.workdir / 'logs' / (name + '.log')}"
                )
            try:
                with urllib.request.urlopen(url, timeout=5, context=ssl_context) as response:
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise ControlPlaneError(f"{name} not healthy at {url} after {timeout:.0f}s: {last_error}")


def kill_leftovers(pids: list[int]) -> list[int]:
    """SIGKILL any of `pids` still alive; return the ones that were."""
    alive = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive
