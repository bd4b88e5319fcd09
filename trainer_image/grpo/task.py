"""The shipped task: two-operand sums over bytes, with a rule-based reward.

A prompt is `AA+BB=` (operands zero-padded); the wanted completion is the sum, zero-padded to two
digits, then `;`. The reward is checkable by rule and gives partial credit so that a policy that
starts from random weights sees a signal: per completion byte 1 for the right byte, 0.25 for the
right kind (a digit where a digit is due, `;` at the end), averaged over the bytes.

Prompt order is a pure function of (seed, global step): every epoch of the prompt set is a seeded
permutation, and iteration t takes the t-th slice of it, so a resume needs no data position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROMPT_LENGTH = 6  # "AA+BB="
END = ord(";")
_DIGITS = np.arange(ord("0"), ord("9") + 1)


@dataclass(frozen=True)
class SumTask:
    operand_max: int  # operands are 0..operand_max
    completion_length: int  # bytes sampled per completion; the answer takes 3

    @property
    def size(self) -> int:
        return (self.operand_max + 1) ** 2

    def pairs(self, indices: np.ndarray) -> np.ndarray:
        """Prompt indices -> (n, 2) operands."""
        n = self.operand_max + 1
        return np.stack([indices // n, indices % n], axis=1)

    def prompt_bytes(self, pairs: np.ndarray) -> np.ndarray:
        """(n, 2) operands -> (n, PROMPT_LENGTH) uint8 prompts."""
        text = [f"{a:02d}+{b:02d}=" for a, b in pairs]
        return np.frombuffer("".join(text).encode(), dtype=np.uint8).reshape(len(text), PROMPT_LENGTH)

    def targets(self, pairs: np.ndarray) -> np.ndarray:
        """(n, 2) operands -> (n, completion_length) wanted bytes; `;` fills any bytes after the answer."""
        text = [(f"{a + b:02d};" + ";" * self.completion_length)[: self.completion_length] for a, b in pairs]
        return np.frombuffer("".join(text).encode(), dtype=np.uint8).reshape(len(text), -1)

    def rewards(self, completions: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per completion, in [0, 1], float32."""
        exact = completions == targets
        digit_due = np.isin(targets, _DIGITS)
        same_kind = np.where(digit_due, np.isin(completions, _DIGITS), completions == END)
        score = np.where(exact, 1.0, np.where(same_kind, 0.25, 0.0))
        return score.mean(axis=1).astype(np.float32)


def prompt_indices(
    task: SumTask, *, seed: int, iteration: int, batch: int, offset: int, count: int
) -> np.ndarray:
    """The prompts of 0-based `iteration`: `count` of the global batch of `batch`, from `offset`.
    Iterations walk seeded per-epoch permutations; a batch never straddles two epochs."""
    per_epoch = task.size // batch
    if per_epoch < 1:
        raise ValueError(f"the task has {task.size} prompts, fewer than a global batch of {batch}")
    epoch, position = divmod(iteration, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(task.size)
    start = position * batch + offset
    return order[start : start + count]


def steps_per_epoch(task: SumTask, batch: int) -> int:
    return task.size // batch
