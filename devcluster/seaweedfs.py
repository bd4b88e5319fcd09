"""The SeaweedFS server (`weed`) the object-store tests run as a real S3 endpoint.

Built from the Go module pinned in `hack/seaweedfs/` (a module of its own: its hundreds of
dependencies must not meet the control plane's), cached under the same root as the control-plane
binaries and keyed by a hash of that go.mod/go.sum, so a second run builds nothing. The build is
staged in a temporary directory renamed into place, so a half build is never seen.
`python -m devcluster.seaweedfs` prints the directory holding `weed`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devcluster.assets import AssetError, cache_root

MODULE_DIR = Path(__file__).resolve().parent.parent / "hack" / "seaweedfs"
PACKAGE = "github.com/seaweedfs/seaweedfs/weed"
BINARY = "weed"


def cache_dir() -> Path:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum"):
        digest.update((MODULE_DIR / name).read_bytes())
    return cache_root() / "seaweedfs" / digest.hexdigest()[:16]


def binary_path() -> Path:
    return cache_dir() / BINARY


def build(target: Path, log=sys.stderr) -> None:
    if shutil.which("go") is None:
        raise AssetError("`go` is not on PATH; install Go to build the SeaweedFS server")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        print(f"building {BINARY} from {PACKAGE} ...", file=log, flush=True)
        subprocess.run(
            ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(staging / BINARY), PACKAGE],
            cwd=MODULE_DIR,
            check=True,
            env={**os.environ, "GOFLAGS": "-mod=readonly"},
        )
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def ensure_seaweedfs(log=sys.stderr) -> Path:
    """Return the directory holding `weed`, building it only if the cache lacks it."""
    directory = cache_dir()
    if os.access(directory / BINARY, os.X_OK):
        return directory
    try:
        build(directory, log=log)
    except OSError:
        # A concurrent build (another worktree, another session) won the rename.
        if not os.access(directory / BINARY, os.X_OK):
            raise
    print(f"built {BINARY} into {directory}", file=log, flush=True)
    return directory


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m devcluster.seaweedfs", file=sys.stderr)
        return 2
    try:
        print(ensure_seaweedfs())
    except (AssetError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
