"""The real MindFormers 2.0.0 for tests: a venv of its own, built from requirements/mindformers.txt
(every package pinned with its hashes, installed `--require-hashes --no-deps`) and cached outside the
repository like the control-plane binaries (devcluster/assets.py), keyed by a hash of the lock file.

`make mindformers` (a dependency of `make test`) builds it once; a test that finds it missing builds
it too. `RESPAWN_MINDFORMERS_PYTHON` pointing at an interpreter that already has MindFormers 2.0.0
skips the build.

    subprocess.run([mindformers_python(), script], env=mindformers_env(), cwd=scratch_dir)

MindFormers imports `hyper_parallel`, which no registry serves and which the code the tests run
never calls: `mindformers_env()` puts the TEST-ONLY stand-in in tests/support/mindformers_standin/
on PYTHONPATH. MindFormers also creates `./output/log/` in the working directory when it is
imported, so run it from a scratch directory (`cwd=`), never from the repository.

`python -m tests.support.mindformers` builds (or finds) the venv and prints its interpreter.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from devcluster.assets import cache_root
from tests.support import REPO

LOCK = REPO / "requirements" / "mindformers.txt"
STANDIN = REPO / "tests" / "support" / "mindformers_standin"
# TEST-ONLY: MindFormers' Trainer on CPU (its two patches are in the script).
CPU_LAUNCHER = REPO / "tests" / "support" / "mindformers_cpu.py"
PYTHON_ENV = "RESPAWN_MINDFORMERS_PYTHON"
VERSION = "2.0.0"
_DONE = ".installed"


def venv_dir() -> Path:
    """Where the venv for the current lock file lives (it need not exist yet)."""
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return cache_root() / "mindformers" / f"mindformers-{VERSION}-{python}-{digest}"


def _pip(*args: str) -> None:
    # The project venv's pinned pip installs into the new venv (`--python`), so the new one needs
    # no pip upgrade of its own.
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    subprocess.run(command, check=True, env={k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"})


def build(target: Path, log=sys.stderr) -> None:
    """A fresh venv at `target` with exactly the locked packages; `.installed` is written last, so
    an interrupted build is started over, never used."""
    shutil.rmtree(target, ignore_errors=True)
    print(f"building the MindFormers {VERSION} venv in {target} from {LOCK.name} ...", file=log, flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    python = str(target / "bin" / "python")
    _pip("--python", python, "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(LOCK))
    (target / _DONE).write_text(LOCK.read_text())


def ensure(log=sys.stderr) -> Path:
    """The venv's directory, built first if it is missing or incomplete (one builder at a time)."""
    target = venv_dir()
    if (target / _DONE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / _DONE).is_file():
            build(target, log=log)
    return target


def mindformers_python() -> Path:
    """An interpreter that can `import mindformers` (with `mindformers_env()`)."""
    if override := os.environ.get(PYTHON_ENV):
        return Path(override)
    return ensure() / "bin" / "python"


def cpu_launcher_command(*args: str) -> list[str]:
    """The TEST-ONLY CPU launcher with `args` (its flags: tests/support/mindformers_cpu.py). `-P`: the
    script's own directory must not come first on sys.path, where this module would shadow
    `mindformers`."""
    return [str(mindformers_python()), "-P", str(CPU_LAUNCHER), *args]


def mindformers_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the TEST-ONLY `hyper_parallel` stand-in
    first on PYTHONPATH. Run the interpreter from a scratch working directory."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(STANDIN), env.get("PYTHONPATH", "")) if p)
    return env


if __name__ == "__main__":
    print(mindformers_python())
