"""respawn's in-container trainer: MindSpore training that checkpoints crash-safely and resumes exactly.

Layers, each importing only the ones below it:

- entry points: `__main__` (`python -m trainer_image`) and `trainer` (the Python API, `Trainer`);
- `training/`: the loop of one rank, where it resumes from, the model, data, the MindSpore backend,
  data parallelism and stopping on request;
- `checkpoint/`: the trainer's side of the checkpoint protocol (commit, prune, async snapshots,
  the merge for a new world size, the loop position saved in every checkpoint);
- `config`: the YAML config;
- `respawn_protocol` (its own package, shared with the controller and the CLI): the contract,
  checkpoint layout, meta.json, the resolver and steps.jsonl.

Importing the package is cheap: `Trainer` and `TrainingArguments` load on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Trainer", "TrainingArguments"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from trainer_image import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
