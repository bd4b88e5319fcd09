"""Fixtures for trainer tests: the trainer processes' environment, and processes killed afterwards.
The helpers are in tests/support/trainer.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.trainer import TrainerProcess


@pytest.fixture(scope="session")
def trainer_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for trainer processes; one compile cache root for the session keeps restarts fast
    (trainer_image/training/compile_cache.py keys its entries apart; MindSpore's own cache, shared
    like this, gave one config another's graphs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESPAWN_")}
    env.update(
        PYTHONPATH=str(REPO),
        GLOG_v="3",
        RESPAWN_COMPILE_CACHE_DIR=str(tmp_path_factory.mktemp("compile_cache")),
    )
    return env


@pytest.fixture
def launch(trainer_env: dict[str, str]) -> Iterator[Callable[..., TrainerProcess]]:
    started: list[TrainerProcess] = []

    def _launch(config_path: Path, **extra_env: str) -> TrainerProcess:
        p = TrainerProcess(config_path, trainer_env, config_path.with_suffix(".log"), extra_env)
        started.append(p)
        return p

    yield _launch
    for p in started:
        if p.proc.poll() is None:
            p.kill()
