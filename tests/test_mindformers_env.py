"""The real MindFormers 2.0.0 that the interop tests run (tests/support/mindformers.py): built from the
hashed lock requirements/mindformers.txt into a cached venv of its own, exactly the locked packages.

`import mindformers` works only with the TEST-ONLY `hyper_parallel` stand-in on the path
(tests/support/mindformers_standin/): no registry serves `hyper-parallel`, and the code the tests run
never uses it. The stand-in is on the path of the tests' MindFormers processes only; it is not
installed, and without it the import fails as it would for a user.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.mindformers import LOCK, STANDIN, mindformers_env, mindformers_python

pytestmark = pytest.mark.timeout(900)  # the first use on a machine builds the venv (~2 min measured)

PROBE = """
import json, importlib.metadata as md
print(json.dumps({d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}))
"""


def locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", LOCK.read_text(), re.M)
    return {name.lower().replace("_", "-"): version for name, version in pins}


def test_the_venv_holds_exactly_the_locked_packages(tmp_path: Path) -> None:
    out = subprocess.run(
        [str(mindformers_python()), "-c", PROBE], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    installed = json.loads(out)
    assert locked()["mindformers"] == "2.0.0"
    assert locked()["mindspore"] == "2.10.0"
    assert installed == locked()
    assert "hyper-parallel" not in installed, "no registry serves it: only the test-only stand-in exists"


def test_mindformers_imports_only_with_the_test_only_standin(tmp_path: Path) -> None:
    probe = "import mindformers, hyper_parallel; print(mindformers.__version__, hyper_parallel.__file__)"
    python = str(mindformers_python())
    result = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, env=mindformers_env(), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    version, standin = result.stdout.split()[-2:]
    assert version == "2.0.0"
    assert Path(standin).is_relative_to(STANDIN), "hyper_parallel must be the TEST-ONLY stand-in"
    assert (tmp_path / "output" / "log").is_dir(), "MindFormers writes ./output/log when imported"

    bare = subprocess.run([python, "-c", "import mindformers"], capture_output=True, text=True, cwd=tmp_path)
    assert bare.returncode != 0 and "No module named 'hyper_parallel'" in bare.stderr
