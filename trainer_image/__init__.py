"""respawn's in-container trainer: MindSpore training that checkpoints crash-safely and resumes exactly.

Importing the package is cheap: `contract` and `resolve` (used by the controller) never import MindSpore;
`Trainer` and `TrainingArguments` load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "TrainingArguments"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trainer_image import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
