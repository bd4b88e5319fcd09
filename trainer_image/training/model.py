"""Models trained by respawn: a small decoder-only LLaMA-style transformer and a tiny MLP, both over bytes.

Dropout takes its keep-masks as an input built on the host from the global step, because MindSpore's CPU
dropout kernel is neither reproducible nor checkpointable.
"""

from __future__ import annotations

import math

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, initializer

from trainer_image.config import ModelConfig

_NEG = -1e9


class RMSNorm(nn.Cell):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = Parameter(initializer("ones", (dim,), ms.float32), name="weight")
        self.eps = eps

    def construct(self, x):
        variance = ops.mean(ops.square(x), -1, keep_dims=True)
        return x * ops.rsqrt(variance + self.eps) * self.weight


def _dense(fan_in: int, fan_out: int) -> nn.Dense:
    return nn.Dense(fan_in, fan_out, weight_init=Normal(0.02), has_bias=False)


def _rotary_tables(seq_length: int, head_dim: int) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.arange(seq_length, dtype=np.float64), inv_freq)
    angles = np.concatenate([angles, angles], axis=-1)
    return Tensor(np.cos(angles).astype(np.float32)), Tensor(np.sin(angles).astype(np.float32))


class Attention(nn.Cell):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.num_heads = c.num_heads
        self.head_dim = c.hidden_size // c.num_heads
        self.half = self.head_dim // 2
        self.rotary = c.position_embedding == "rotary"
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.wq = _dense(c.hidden_size, c.hidden_size)
        self.wk = _dense(c.hidden_size, c.hidden_size)
        self.wv = _dense(c.hidden_size, c.hidden_size)
        self.wo = _dense(c.hidden_size, c.hidden_size)

    def _heads(self, x, b, s):
        return x.reshape(b, s, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _rotate(self, x, cos, sin):
        rotated = ops.cat((-x[..., self.half :], x[..., : self.half]), -1)
        return x * cos + rotated * sin

    def construct(self, x, cos, sin, mask):
        b, s, h = x.shape
        q = self._heads(self.wq(x), b, s)
        k = self._heads(self.wk(x), b, s)
        v = self._heads(self.wv(x), b, s)
        if self.rotary:
            q = self._rotate(q, cos, sin)
            k = self._rotate(k, cos, sin)
        scores = ops.matmul(q, k.swapaxes(-1, -2)) * self.scale + mask
        out = ops.matmul(ops.softmax(scores, -1), v)
        return self.wo(out.transpose(0, 2, 1, 3).reshape(b, s, h))


class SwiGLU(nn.Cell):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.w1 = _dense(c.hidden_size, c.intermediate_size)
        self.w3 = _dense(c.hidden_size, c.intermediate_size)
        self.w2 = _dense(c.intermediate_size, c.hidden_size)

    def construct(self, x):
        return self.w2(ops.silu(self.w1(x)) * self.w3(x))


class Block(nn.Cell):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.attention = Attention(c)
        self.ffn_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.feed_forward = SwiGLU(c)

    def construct(self, x, cos, sin, mask, keep_attn, keep_ffn):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask) * keep_attn
        return x + self.feed_forward(self.ffn_norm(x)) * keep_ffn


class Llama(nn.Cell):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        s = c.seq_length
        self.use_dropout = c.dropout > 0
        self.learned_positions = c.position_embedding == "learned"
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.hidden_size, embedding_table=Normal(0.02))
        if self.learned_positions:
            self.pos_embeddings = Parameter(
                initializer(Normal(0.02), (s, c.hidden_size)), name="pos_embeddings"
            )
        self.layers = nn.CellList([Block(c) for _ in range(c.num_layers)])
        self.norm_out = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.lm_head = _dense(c.hidden_size, c.vocab_size)
        self.cos, self.sin = _rotary_tables(s, c.hidden_size // c.num_heads)
        self.mask = Tensor(np.triu(np.full((s, s), _NEG, dtype=np.float32), k=1))
        self.num_layers = c.num_layers

    def construct(self, tokens, keep=None):
        x = self.tok_embeddings(tokens)
        if self.learned_positions:
            x = x + self.pos_embeddings
        for i in range(self.num_layers):
            if self.use_dropout:
                x = self.layers[i](x, self.cos, self.sin, self.mask, keep[i, 0], keep[i, 1])
            else:
                x = self.layers[i](x, self.cos, self.sin, self.mask, 1.0, 1.0)
        return self.lm_head(self.norm_out(x))


class Mlp(nn.Cell):
    """Per-position MLP over byte embeddings: a bigram-style baseline that trains in no time."""

    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.use_dropout = c.dropout > 0
        self.embedding = nn.Embedding(c.vocab_size, c.hidden_size, embedding_table=Normal(0.02))
        self.hidden = _dense(c.hidden_size, c.intermediate_size)
        self.out = _dense(c.intermediate_size, c.vocab_size)

    def construct(self, tokens, keep=None):
        h = ops.silu(self.hidden(self.embedding(tokens)))
        if self.use_dropout:
            h = h * keep
        return self.out(h)


def build_model(c: ModelConfig) -> nn.Cell:
    return Llama(c) if c.type == "llama" else Mlp(c)


def dropout_keep(c: ModelConfig, batch_size: int, seed: int, global_step: int) -> np.ndarray | None:
    """Inverted-dropout keep-mask for one step: a pure function of (seed, global step)."""
    if c.dropout <= 0:
        return None
    rng = np.random.default_rng([seed, global_step])
    if c.type == "llama":
        shape: tuple[int, ...] = (c.num_layers, 2, batch_size, c.seq_length, c.hidden_size)
    else:
        shape = (batch_size, c.seq_length, c.intermediate_size)
    keep = rng.random(shape, dtype=np.float32) >= np.float32(c.dropout)
    return keep.astype(np.float32) / np.float32(1.0 - c.dropout)


class CausalLMLoss(nn.Cell):
    """Next-byte cross-entropy over windows of seq_length + 1 tokens."""

    def __init__(self, network: nn.Cell, vocab_size: int) -> None:
        super().__init__()
        self.network = network
        self.vocab_size = vocab_size
        self.ce = nn.CrossEntropyLoss()

    def construct(self, batch, *keep):
        logits = self.network(batch[:, :-1], *keep)
        labels = batch[:, 1:]
        return self.ce(logits.reshape(-1, self.vocab_size), labels.reshape(-1))
