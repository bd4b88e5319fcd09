"""pytest fixtures shared by the e2e tests (loaded as a plugin by tests/conftest.py).

`shared_root`: a directory (`tmp_path/shared`) for the jobs' hostPath shared volume.
`job_controller`: the controller in this process for the test's namespace, as a plain install runs
it: no volume mounted, checkpoints and progress known only from the trainers' reports on their
pods (respawn_protocol/report.py); device faults off.
`shared_controller`: the same, also reading checkpoints from `shared_root` through the optional
checkpoint observer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.kube import running_controller


@pytest.fixture
def shared_root(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    return shared


@pytest.fixture
def job_controller(api_client: client.ApiClient, namespace: str) -> Iterator[Controller]:
    with running_controller(api_client, namespace, shared=None, device_faults=False) as controller:
        assert controller.checkpoints is None, "this controller must mount nothing"
        yield controller


@pytest.fixture
def shared_controller(
    api_client: client.ApiClient, namespace: str, shared_root: Path
) -> Iterator[Controller]:
    with running_controller(api_client, namespace, shared=shared_root, device_faults=False) as controller:
        yield controller
