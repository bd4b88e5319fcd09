"""GRPO's host-side arithmetic: sampling a completion byte, and group-normalised advantages.

Sampling draws its uniforms from a generator keyed on (seed, global step, rank), never on process
state, so an iteration run again after a resume samples the same completions.
"""

from __future__ import annotations

import numpy as np

ADVANTAGE_EPS = 1e-4


def sampling_rng(seed: int, global_step: int, rank: int) -> np.random.Generator:
    return np.random.default_rng([seed, global_step, rank])


def sample(logits: np.ndarray, uniforms: np.ndarray, temperature: float) -> np.ndarray:
    """One byte per row of `logits` (n, vocab) by inverse CDF of the softmax at `temperature`, from
    `uniforms` (n,) in [0, 1). float64 throughout: the same inputs give the same bytes anywhere."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled)
    cdf = np.cumsum(probs, axis=1)
    cdf /= cdf[:, -1:]
    picks = (cdf < uniforms[:, None]).sum(axis=1)
    return np.minimum(picks, logits.shape[1] - 1).astype(np.int32)


def group_advantages(rewards: np.ndarray, group: int) -> np.ndarray:
    """(r - mean) / (std + eps) within each prompt's `group` consecutive completions; float32."""
    r = rewards.astype(np.float64).reshape(-1, group)
    adv = (r - r.mean(axis=1, keepdims=True)) / (r.std(axis=1, keepdims=True) + ADVANTAGE_EPS)
    return adv.reshape(-1).astype(np.float32)
