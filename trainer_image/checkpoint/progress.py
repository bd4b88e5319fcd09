"""The loop's position, saved as `respawn.*` extras in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, fields

from trainer_image.config import ConfigError

EXTRA_PREFIX = "respawn."
_OPTIONAL = frozenset({"global_batch_size"})  # added later; files without it still load


class CheckpointMismatch(ConfigError):
    """The checkpoint does not fit the configured model or trainer. Permanent."""


@dataclass
class Progress:
    epoch: int = 0  # 1-based epoch of the last finished step; keeps counting across datasets
    step: int = 0  # 1-based step within that epoch
    global_step: int = 0  # steps run by the job, over all datasets (overflow-skipped ones included)
    epoch_base: int = 0  # epochs finished before the current dataset started
    data_step: int = 0  # batches consumed from the current dataset
    dataset_fingerprint: int = 0
    global_batch_size: int = 0  # samples per global step when saved; 0 = unknown (older checkpoints)

    def advance(self, *, steps_per_epoch: int) -> None:
        """Count one finished step of the current dataset."""
        self.global_step += 1
        self.data_step += 1
        self.epoch = self.epoch_base + (self.data_step - 1) // steps_per_epoch + 1
        self.step = (self.data_step - 1) % steps_per_epoch + 1

    def extras(self) -> dict[str, int]:
        return {EXTRA_PREFIX + f.name: int(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_extras(cls, extras: dict[str, int]) -> Progress:
        missing = [
            f.name for f in fields(cls) if EXTRA_PREFIX + f.name not in extras and f.name not in _OPTIONAL
        ]
        if missing:
            raise CheckpointMismatch(
                f"checkpoint lacks the respawn progress fields {missing}; "
                "to start from its weights only, set resume_training: False"
            )
        return cls(
            **{f.name: extras[EXTRA_PREFIX + f.name] for f in fields(cls) if EXTRA_PREFIX + f.name in extras}
        )
