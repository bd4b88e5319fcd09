"""The architecture is checked, not just described: import-linter's contracts (pyproject.toml,
run by `make lint`) fail on a violation, and the product's modules and functions stay small."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = (
    "controller",
    "trainer_image",
    "respawn_protocol",
    "respawn_cli",
    "devcluster",
    "tests",
    "scripts",
)
SMALL = ("controller", "trainer_image", "respawn_protocol")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(tool), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python sources and pyproject.toml, somewhere violations can be planted."""
    root = tmp_path_factory.mktemp("tree")
    shutil.copy(REPO / "pyproject.toml", root)
    for package in PACKAGES:
        for source in (REPO / package).rglob("*.py"):
            target = root / source.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    return root


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("controller/core/plan.py", "import kubernetes", "The core decides without I/O"),
        ("controller/core/decide.py", "from controller.adapters import metrics", "Controller layers"),
        ("controller/runtime/clock.py", "from controller.api import types", "The runtime is generic"),
        ("respawn_cli/history.py", "from trainer_image.training import loop", "never the trainer"),
        ("controller/adapters/metrics.py", "import mindspore", "never the trainer"),
        ("respawn_protocol/meta.py", "import numpy", "The protocol stands alone"),
        ("devcluster/pki.py", "from respawn_protocol import crd", "devcluster is development tooling"),
        ("trainer_image/checkpoint/prune.py", "from trainer_image.training import stop", "Trainer layers"),
        ("tests/support/poll.py", "from tests import conftest", "never a test module"),
        ("tests/support/kube.py", "from tests.controller.core import test_decide", "never a test module"),
        ("scripts/demo.py", "from tests.e2e import test_demo", "never a test module"),
    ],
)
def test_a_violation_breaks_its_contract(tree_copy: Path, module: str, line: str, contract: str) -> None:
    path = tree_copy / module
    original = path.read_text()
    path.write_text(f"{original}\n{line}  # planted by the test\n")
    try:
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and "planted" not in result.stderr, result.stdout


def test_the_tree_keeps_its_contracts(tree_copy: Path) -> None:
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


def _sizes() -> list[str]:
    found = []
    for package in SMALL:
        for source in sorted((REPO / package).rglob("*.py")):
            text = source.read_text()
            where = source.relative_to(REPO)
            if (lines := len(text.splitlines())) > MAX_MODULE_LINES:
                found.append(f"{where}: {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    length = (node.end_lineno or node.lineno) - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        found.append(f"{where}:{node.lineno} {node.name}: {length} lines")
    return found


def test_modules_and_functions_stay_small() -> None:
    assert _sizes() == []
