"""Control-plane binaries (etcd, kube-apiserver, kube-controller-manager) and helm at pinned versions.

They are built from Go modules through the module proxy, from the small module in
`hack/controlplane/` whose go.mod pins `k8s.io/kubernetes` and `go.etcd.io/etcd/server/v3`, and
helm from its own module in `hack/helm/` (its Kubernetes dependencies must not meet the
control plane's replace block). The result is cached outside the repository, keyed by a hash
of both modules' go.mod/go.sum, so a second run builds nothing. `RESPAWN_ASSETS` pointing at a
directory that already holds the binaries skips the build altogether, as envtest's
KUBEBUILDER_ASSETS does.

kube-controller-manager is built only when asked for (the local cluster, the reaction benchmark):
the tests run without it, as envtest does, and on a new machine it is minutes of compiling.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ASSETS_ENV = "RESPAWN_ASSETS"
CACHE_ENV = "RESPAWN_CACHE_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
GO_MODULE_DIR = REPO_ROOT / "hack" / "controlplane"
HELM_MODULE_DIR = REPO_ROOT / "hack" / "helm"


@dataclass(frozen=True)
class Binary:
    name: str
    package: str
    # Go package whose version variables are stamped at link time (-X).
    version_package: str | None = None
    # Built the first time someone asks for it, not with the rest.
    on_demand: bool = False


# Go module directory -> the binaries built from it, each module with its own go.mod/go.sum.
MODULES: dict[Path, tuple[Binary, ...]] = {
    GO_MODULE_DIR: (
        Binary("etcd", "go.etcd.io/etcd/server/v3"),
        Binary("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/component-base/version"),
        Binary(
            "kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/component-base/version",
            on_demand=True,
        ),
    ),
    HELM_MODULE_DIR: (Binary("helm", "helm.sh/helm/v4/cmd/helm", "helm.sh/helm/v4/internal/version"),),
}
BINARIES = tuple(binary for binaries in MODULES.values() for binary in binaries)
CONTROLLER_MANAGER = "kube-controller-manager"


class AssetError(RuntimeError):
    pass


def _pinned_version(module_dir: Path, module: str) -> str:
    pattern = rf"^(?:require)?\s*{re.escape(module)} (v\S+)"
    match = re.search(pattern, (module_dir / "go.mod").read_text(), re.M)
    if not match:
        raise AssetError(f"no {module} requirement in {module_dir / 'go.mod'}")
    return match.group(1)


def pinned_kubernetes_version() -> str:
    return _pinned_version(GO_MODULE_DIR, "k8s.io/kubernetes")


def pinned_helm_version() -> str:
    return _pinned_version(HELM_MODULE_DIR, "helm.sh/helm/v4")


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "respawn"


def cache_dir() -> Path:
    digest = hashlib.sha256()
    for module_dir in MODULES:
        for name in ("go.mod", "go.sum"):
            digest.update((module_dir / name).read_bytes())
    versions = f"kubernetes-{pinned_kubernetes_version()}-helm-{pinned_helm_version()}"
    return cache_root() / "assets" / f"{versions}-{digest.hexdigest()[:12]}"


def _missing(directory: Path, extra: tuple[str, ...] = ()) -> list[Binary]:
    wanted = [b for b in BINARIES if not b.on_demand or b.name in extra]
    return [b for b in wanted if not os.access(directory / b.name, os.X_OK)]


def _kubernetes_stamps() -> dict[str, str]:
    version = pinned_kubernetes_version()
    major, minor = version.lstrip("v").split(".")[:2]
    # Without these the server reports v0.0.0-master, which breaks clients (helm, kubectl)
    # that gate on the server version.
    return {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }


def _helm_stamps() -> dict[str, str]:
    # Otherwise `helm version` says only "v4.3", the release branch's placeholder.
    return {"version": pinned_helm_version(), "gitTreeState": "clean"}


_VERSION_STAMPS = {
    "k8s.io/component-base/version": _kubernetes_stamps,
    "helm.sh/helm/v4/internal/version": _helm_stamps,
}


def _ldflags(binary: Binary) -> str:
    if binary.version_package is None:
        return "-s -w"
    pkg = binary.version_package
    stamps = _VERSION_STAMPS[pkg]()
    return " ".join(["-s", "-w", *(f"-X {pkg}.{k}={v}" for k, v in stamps.items())])


def _go_build(binary: Binary, output: Path, log) -> None:
    print(f"building {binary.name} from {binary.package} ...", file=log, flush=True)
    module_dir = next(d for d, binaries in MODULES.items() if binary in binaries)
    subprocess.run(
        ["go", "build", "-trimpath", "-ldflags", _ldflags(binary), "-o", str(output), binary.package],
        cwd=module_dir,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=readonly"},
    )


def build(target: Path, log=sys.stderr) -> None:
    """Build every binary that is not on demand into `target`, which appears only when complete."""
    if shutil.which("go") is None:
        raise AssetError("`go` is not on PATH; install Go or set RESPAWN_ASSETS to prebuilt binaries")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        for binary in BINARIES:
            if not binary.on_demand:
                _go_build(binary, staging / binary.name, log)
        # A half-built directory is never visible under the final name.
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _build_into(directory: Path, binary: Binary, log) -> None:
    if shutil.which("go") is None:
        raise AssetError(f"`go` is not on PATH; needed to build {binary.name}")
    staging = directory / f".{binary.name}.{os.getpid()}"
    try:
        _go_build(binary, staging, log)
        staging.rename(directory / binary.name)
    finally:
        staging.unlink(missing_ok=True)


def ensure_assets(log=sys.stderr, *, extra: tuple[str, ...] = ()) -> Path:
    """Return a directory holding every control-plane binary and helm, building them only if needed;
    `extra` names binaries built on demand (kube-controller-manager) that are wanted too."""
    override = os.environ.get(ASSETS_ENV)
    if override:
        directory = Path(override)
        if missing := _missing(directory, extra):
            names = ", ".join(b.name for b in missing)
            raise AssetError(f"{ASSETS_ENV}={directory} lacks executable {names}")
        print(f"using control-plane binaries from {ASSETS_ENV}: {directory}", file=log, flush=True)
        return directory
    directory = cache_dir()
    if directory.is_dir():
        print(f"found cached control-plane binaries in {directory}", file=log, flush=True)
    else:
        build(directory, log=log)
        print(f"built control-plane binaries into {directory}", file=log, flush=True)
    for binary in _missing(directory, extra):
        if not binary.on_demand:
            raise AssetError(f"{directory} lacks {binary.name}; remove the directory to rebuild it")
        _build_into(directory, binary, log)
    return directory


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m devcluster assets", file=sys.stderr)
        return 2
    try:
        print(ensure_assets())
    except (AssetError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
