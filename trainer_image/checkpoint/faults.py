"""Test hook: die by SIGKILL at a named point of the checkpoint protocol.

`RESPAWN_FAULT=after_publish:3` kills the process the third time it reaches `after_publish`. Unset in
production; the points are listed in docs/trainer.md.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

FAULT_ENV = "RESPAWN_FAULT"
# upload_before_meta: the store uploader, after the checkpoint object, before the remote meta.json.
POINTS = ("before_publish", "after_publish", "after_meta", "after_prune", "upload_before_meta")


class FaultPlan:
    def __init__(self, spec: str | None = None, action: Callable[[str], None] | None = None) -> None:
        spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
        self.action = action or _die
        self.point, self.remaining = "", 0
        if spec:
            point, _, count = spec.partition(":")
            if point not in POINTS:
                raise ValueError(f"{FAULT_ENV}: unknown point {point!r} (known: {', '.join(POINTS)})")
            self.point, self.remaining = point, int(count or 1)

    def reach(self, point: str) -> None:
        if point == self.point:
            self.remaining -= 1
            if self.remaining == 0:
                self.action(point)


def _die(point: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)
