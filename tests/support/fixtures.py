"""pytest fixtures shared by the e2e tests (loaded as a plugin by tests/conftest.py).

`shared_root`: a directory (`tmp_path/shared`) for the jobs' hostPath shared volume.
`shared_controller`: the controller in this process for the test's namespace, reading checkpoints
from `shared_root`; device faults off.
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
def shared_controller(
    api_client: client.ApiClient, namespace: str, shared_root: Path
) -> Iterator[Controller]:
    with running_controller(api_client, namespace, shared=shared_root, device_faults=False) as controller:
        yield controller
