"""One iteration's rollout: the prompts of this global step, G completions per prompt sampled byte by
byte from the policy, their rewards and group-normalised advantages, and the per-token
log-probabilities of the sampling policy ("old") and of the reference, computed once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trainer_image.grpo.algo import group_advantages, sample, sampling_rng
from trainer_image.grpo.config import GrpoConfig
from trainer_image.grpo.task import PROMPT_LENGTH, prompt_indices

if TYPE_CHECKING:
    from trainer_image.grpo.backend import GrpoBackend


@dataclass(frozen=True)
class Rollout:
    tokens: np.ndarray  # (n, seq) int32: prompts and sampled completions
    mask: np.ndarray  # (n, seq - 1) float32: 1 where a log-probability is of a completion byte
    old: np.ndarray  # (n, seq - 1) the sampling policy's per-token log-probabilities
    ref: np.ndarray  # (n, seq - 1) the reference's
    rewards: np.ndarray  # (n,) float32
    advantages: np.ndarray  # (n,) float32


def rollout(
    backend: GrpoBackend, config: GrpoConfig, *, global_step: int, rank: int, data_ranks: int
) -> Rollout:
    """Rank `rank` takes its slice of the global batch of `data_ranks` x prompts_per_step prompts."""
    g, task = config.grpo, config.task
    prompts, groups, length = g.prompts_per_step, g.num_generations, g.max_completion_length
    indices = prompt_indices(
        task,
        seed=config.seed,
        iteration=global_step,
        batch=prompts * data_ranks,
        offset=rank * prompts,
        count=prompts,
    )
    pairs = task.pairs(indices)
    n = prompts * groups
    tokens = np.zeros((n, config.model.seq_length), dtype=np.int32)
    tokens[:, :PROMPT_LENGTH] = np.repeat(task.prompt_bytes(pairs), groups, axis=0)
    uniforms = sampling_rng(config.seed, global_step, rank).random((n, length))
    for j in range(length):
        at = PROMPT_LENGTH + j
        logits = backend.logits(tokens)[:, at - 1, :]
        tokens[:, at] = sample(logits, uniforms[:, j], g.temperature)
    completions = tokens[:, PROMPT_LENGTH : PROMPT_LENGTH + length]
    rewards = task.rewards(completions, np.repeat(task.targets(pairs), groups, axis=0))
    mask = np.zeros((n, config.model.seq_length - 1), dtype=np.float32)
    mask[:, PROMPT_LENGTH - 1 : PROMPT_LENGTH - 1 + length] = 1.0
    old, ref = backend.logprobs(tokens)
    return Rollout(tokens, mask, old, ref, rewards, group_advantages(rewards, groups))
