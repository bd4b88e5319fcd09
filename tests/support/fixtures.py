"""pytest fixtures shared by the e2e tests (loaded as a plugin by tests/conftest.py).

`shared_controller`: the controller in this process for the test's namespace, with a shared root
(`tmp_path/shared`) it reads checkpoints from, as the jobs' hostPath shared volume; device faults
off.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from controller.app import Controller
from tests.support.kube import running_controller


@pytest.fixture
def shared_controller(api_client: client.ApiClient, namespace: str, tmp_path: Path) -> Iterator[Controller]:
    shared = tmp_path / "shared"
    shared.mkdir()
    with running_controller(api_client, namespace, shared=shared, device_faults=False) as controller:
        yield controller
