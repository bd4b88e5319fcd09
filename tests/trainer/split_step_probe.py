"""Run by test_split_step.py in its own process: the split step against MindSpore's fused one.

Prints one JSON object: per-step results of both, whether the final states are equal, and what an
async snapshot held when its copy ran only after the next step had computed its gradients.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
from mindspore import Tensor

from trainer_image.config import parse_config
from trainer_image.training.backend import Backend
from trainer_image.training.data import build_stream


def fused_step(backend: Backend, batch: np.ndarray) -> list[Any]:
    loss, overflow, scale, lr = backend.cell(Tensor(batch))
    return [
        int(np.float32(loss.asnumpy()).view(np.uint32)),
        bool(overflow.asnumpy()),
        float(scale.asnumpy()),
        float(np.asarray(lr.asnumpy()).reshape(-1)[0]),
    ]


def split_step(backend: Backend, batch: np.ndarray) -> list[Any]:
    r = backend.step(batch, None)
    return [int(np.float32(r.loss).view(np.uint32)), r.overflow, r.loss_scale, r.lr]


def state(backend: Backend) -> dict[str, np.ndarray]:
    return {p.name: p.asnumpy().copy() for p in backend.cell.get_parameters()}


def main(config_path: str, steps: int) -> None:
    import yaml

    config = parse_config(yaml.safe_load(Path(config_path).read_text()))
    results: dict[str, Any] = {}
    finals = {}
    for kind, step in (("fused", fused_step), ("split", split_step)):
        stream = build_stream(config, rank=0, world_size=1)
        backend = Backend(config, total_steps=steps)
        batches = stream.batches(start_step=0, epochs=2)
        results[kind] = [step(backend, next(batches)) for _ in range(steps)]
        finals[kind] = state(backend)
    results["same_state"] = all(np.array_equal(finals["fused"][k], v) for k, v in finals["split"].items())

    # The snapshot is copied only after the next step has computed its gradients and is waiting.
    before = state(backend)
    snap = backend.snapshot()
    stepper = threading.Thread(target=backend.step, args=(next(batches), None))
    stepper.start()
    stepper.join(timeout=5.0)
    results["step_waited_for_copy"] = stepper.is_alive()
    snap.copy()
    stepper.join()
    after = state(backend)
    results["snapshot_is_pre_step"] = all(np.array_equal(before[k], v) for k, v in snap.arrays.items())
    results["step_changed_state"] = any(not np.array_equal(before[k], after[k]) for k in snap.arrays)
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
