"""The locked dependencies (requirements/, hack/lock.sh) are what pyproject.toml pins, every package
carries its hashes, and the images and the development environment install only from them."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.support import REPO

LOCKS = REPO / "requirements"
_ENTRY = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)")


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def locked(path: Path) -> dict[str, tuple[str, int]]:
    """package -> (version, number of hashes)."""
    out: dict[str, tuple[str, int]] = {}
    current = None
    for line in path.read_text().splitlines():
        if match := _ENTRY.match(line):
            current = _name(match.group(1))
            out[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, hashes = out[current]
            out[current] = (version, hashes + 1)
    return out


def pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        out[_name(name.split("[")[0])] = version
    return out


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = PROJECT["dependencies"]
EXTRAS = PROJECT["optional-dependencies"]
CASES = {
    "controller.txt": RUNTIME,
    "trainer.txt": RUNTIME + EXTRAS["trainer"],
    "dev.txt": RUNTIME + [r for extra in EXTRAS.values() for r in extra],
}


@pytest.mark.parametrize("lock", sorted(CASES))
def test_every_pin_of_pyproject_is_locked_with_hashes(lock: str) -> None:
    entries = locked(LOCKS / lock)
    for name, version in pins(CASES[lock]).items():
        assert entries.get(name, ("missing",))[0] == version, f"{lock}: {name} is not locked at {version}"
    unhashed = [name for name, (_, hashes) in entries.items() if hashes == 0]
    assert unhashed == [], f"{lock}: entries without hashes"
    text = (LOCKS / lock).read_text()
    assert "file://" not in text and "--find-links" not in text and "--index-url" not in text, (
        "machine-specific"
    )


def test_the_locks_agree_where_they_overlap() -> None:
    controller, trainer, dev = (locked(LOCKS / f) for f in ("controller.txt", "trainer.txt", "dev.txt"))
    assert controller.keys() <= trainer.keys() <= dev.keys()
    for name, (version, _) in trainer.items():
        assert dev[name][0] == version, name
    for name, (version, _) in controller.items():
        assert trainer[name][0] == version, name


def test_images_and_the_dev_environment_install_only_from_the_locks() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    installs = [
        line for line in dockerfile.splitlines() if "pip install" in line or "--require-hashes" in line
    ]
    assert "COPY requirements/controller.txt" in dockerfile and "COPY requirements/trainer.txt" in dockerfile
    assert dockerfile.count("--require-hashes --no-deps -r /tmp/requirements.txt") == 2, installs
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes --no-deps -r requirements/dev.txt" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile, "the project itself adds no unlocked package"
