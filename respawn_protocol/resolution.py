"""What resolving a resume point gives: the file of every rank of the step, or random init; and the
error of a request that cannot be met. Shared by resolve.py and resolve_flat.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from respawn_protocol.layout import StepKey


class ResolveError(ValueError):
    """The request cannot be satisfied as given (bad name, missing step). Permanent."""


@dataclass(frozen=True)
class Resolution:
    source: Literal["none", "file", "directory"]
    files: dict[int, Path] = field(default_factory=dict)  # rank -> file; empty means random init
    key: StepKey | None = None
    global_step: int | None = None
    warnings: tuple[str, ...] = ()
    world_size: int | None = None  # ranks of the gang that wrote the step (None: a single full file)
    attempt: int | None = None  # the controller's attempt that wrote the step, where meta.json says
    lineage: str | None = None  # the history the step belongs to, where meta.json says (lineage.py)

    @property
    def random_init(self) -> bool:
        return not self.files
