"""`python -m tests.support.gated_start --config ...`: the trainer, with a test-only barrier that
holds each rank of an independent gang (no use_parallel) right after its checkpointer is built
until every rank's is built.

Why: a checkpointer takes its run number `K` from every rank's folder (checkpointer.py). A gang
that trains data parallel runs its first step together, so no rank commits before all have read the
folders; independent ranks do not, and on a loaded machine one rank can commit its first step before
the other has started, which then names its files `_1` and pairs with nothing. Real MindSpore does
the same; the barrier pins the case the interop tests mean, ranks started together.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

GATE_ENV = "RESPAWN_TEST_GATE"  # a directory shared by the ranks
DEADLINE = 300.0  # a rank that never gets there (it failed) releases the others at this bound


def _gated(init: Any) -> Any:
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        gate = Path(os.environ[GATE_ENV])
        (gate / f"rank{os.environ['RESPAWN_RANK']}").touch()
        world = int(os.environ["RESPAWN_WORLD_SIZE"])
        deadline = time.monotonic() + DEADLINE
        while len(list(gate.glob("rank*"))) < world and time.monotonic() < deadline:
            time.sleep(0.05)

    return __init__


def run() -> int:
    # Imported here: the tests import GATE_ENV from this module without loading the trainer.
    from trainer_image.__main__ import main
    from trainer_image.checkpoint.checkpointer import Checkpointer

    Checkpointer.__init__ = _gated(Checkpointer.__init__)  # type: ignore[method-assign]
    return main(sys.argv[1:])


if __name__ == "__main__":
    code = run()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as trainer_image/__main__.py does
