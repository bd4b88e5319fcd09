"""A snapshot of the training state for an async save, copied off the training loop's critical path.

The training step runs as two graphs: gradients (reads the parameters) then the optimizer (writes
them). The loop takes a snapshot between steps; the writer thread copies it while the next step
computes gradients, and that step waits for the copy to finish before the optimizer may write.
"""

from __future__ import annotations

import threading

import numpy as np


class Snapshot:
    def __init__(self, sources: dict[str, np.ndarray], arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays  # name -> host buffer; valid once `copy` has returned
        self._sources: dict[str, np.ndarray] | None = sources  # live views of the parameters
        self._copied = threading.Event()

    def copy(self) -> None:
        """Fill `arrays` from the live parameters. Always releases `wait_copied`, even on failure."""
        try:
            assert self._sources is not None, "a snapshot is copied once"
            for name, source in self._sources.items():
                np.copyto(self.arrays[name], source)
        finally:
            self._sources = None
            self._copied.set()

    def wait_copied(self) -> None:
        self._copied.wait()
