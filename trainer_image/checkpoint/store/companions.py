"""Files committed with a checkpoint file, in its folder, that the store holds with it: GRPO's
optimizer file (`P-1_5.ckpt` -> `P-1_5.optimizer.ckpt`, trainer_image/grpo/saving.py).

meta.json records only the checkpoint file, so a companion's sha256 travels as its object's
metadata; a companion is uploaded before its checkpoint file and downloaded before it, so a
checkpoint file in the store or on disk always has its companions.
"""

from __future__ import annotations

from dataclasses import dataclass

SHA256_METADATA = "sha256"  # x-amz-meta-sha256


@dataclass(frozen=True)
class Companions:
    tags: tuple[str, ...] = ()  # each inserted before the extension

    def of(self, name: str) -> list[str]:
        stem, dot, ext = name.rpartition(".")
        return [f"{stem}{tag}.{ext}" for tag in self.tags] if dot else []

    def owner(self, name: str) -> str | None:
        """The checkpoint file a companion belongs to; None for a name that is no companion."""
        stem, dot, ext = name.rpartition(".")
        for tag in self.tags:
            if dot and stem.endswith(tag):
                return f"{stem[: -len(tag)]}.{ext}"
        return None
