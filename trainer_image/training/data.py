"""Training data: fixed windows of byte tokens, shuffled by a seeded MindSpore pipeline.

Resume fast-forwards with `set_init_step`, which replays each epoch's own shuffle; `skip` would not.
With N ranks, MindSpore's sharded sampler deals one seeded permutation out round-robin (rank r takes
samples r, r + N, ...), so global batch t holds the same samples for any N with the same global
batch size (when the sample count is a multiple of N; otherwise MindSpore pads the shards).
The identity of a stream (content, seed, shuffle) is a fingerprint stored in every checkpoint: a
different fingerprint on resume means incremental training on new data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer_image.config import ConfigError, TrainerConfig, default_corpus_dir


class DataError(ConfigError):
    """The configured data cannot be read or is too small. Permanent."""


def load_windows(c: TrainerConfig) -> np.ndarray:
    """All samples as an int32 array of shape (n, seq_length + 1)."""
    loader = c.train_dataset.data_loader
    width = c.model.seq_length + 1
    if loader.type == "SyntheticDataset":
        return _synthetic(loader.num_samples, width, c.model.vocab_size, loader.content_seed)
    raw = _read_text(Path(loader.dataset_dir) if loader.dataset_dir else default_corpus_dir())
    n = len(raw) // width
    if loader.num_samples:
        n = min(n, loader.num_samples)
    tokens = np.frombuffer(raw[: n * width], dtype=np.uint8).astype(np.int32) % c.model.vocab_size
    return tokens.reshape(n, width)


def _read_text(path: Path) -> bytes:
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
    else:
        raise DataError(f"train_dataset.data_loader.dataset_dir: {path} does not exist")
    if not files:
        raise DataError(f"train_dataset.data_loader.dataset_dir: no .txt files in {path}")
    try:
        return b"\n".join(p.read_bytes() for p in files)
    except OSError as e:
        raise DataError(
            f"train_dataset.data_loader.dataset_dir: cannot read {e.filename}: {e.strerror}"
        ) from e


def _synthetic(n: int, width: int, vocab: int, seed: int) -> np.ndarray:
    """Arithmetic byte sequences with random start and stride: learnable, and unlike the text."""
    rng = np.random.default_rng([seed, 0x5EED])
    start = rng.integers(0, vocab, size=(n, 1))
    stride = rng.integers(1, 8, size=(n, 1))
    return ((start + stride * np.arange(width)) % vocab).astype(np.int32)


@dataclass(frozen=True)
class DataStream:
    dataset: object  # a batched mindspore.dataset.Dataset
    steps_per_epoch: int
    fingerprint: int

    def batches(self, *, start_step: int, epochs: int) -> Iterator[np.ndarray]:
        """Batches from `start_step` (counted from the stream's beginning) to the end of `epochs` epochs."""
        if epochs <= 0 or start_step >= epochs * self.steps_per_epoch:
            return
        ds = self.dataset
        ds.set_init_step(start_step)  # type: ignore[attr-defined]
        iterator = ds.create_tuple_iterator(num_epochs=epochs, output_numpy=True)  # type: ignore[attr-defined]
        for _ in range(epochs - start_step // self.steps_per_epoch):
            for (batch,) in iterator:
                yield batch


def fingerprint(windows: np.ndarray, *, seed: int, shuffle: bool) -> int:
    """The sample stream's identity. Not the batch size or the world size: the global order of
    samples depends on neither, and a changed global batch is rescaled, not new data."""
    h = hashlib.sha256(windows.tobytes())
    h.update(f"{windows.shape}|{seed}|{shuffle}".encode())
    return int.from_bytes(h.digest()[:8], "little") >> 1  # fits an int64 tensor


def build_stream(c: TrainerConfig, *, rank: int, world_size: int) -> DataStream:
    import mindspore.dataset as mds

    windows = load_windows(c)
    batch = c.runner_config.batch_size
    if len(windows) // world_size < batch:
        raise DataError(
            f"train_dataset: {len(windows)} samples of {c.model.seq_length + 1} bytes are fewer than "
            f"one batch of {batch} per rank"
        )
    mds.config.set_seed(c.seed)
    shuffle = c.train_dataset.data_loader.shuffle
    source = _Windows(windows)
    dataset = mds.GeneratorDataset(
        source,
        column_names=["tokens"],
        shuffle=shuffle,
        num_parallel_workers=c.train_dataset.num_parallel_workers,
        python_multiprocessing=False,
        # Sharded even for one rank: the sharded sampler deals one permutation round-robin, so any
        # world size sees the same global order (the unsharded sampler permutes differently).
        num_shards=world_size,
        shard_id=rank,
    ).batch(batch, drop_remainder=True)
    fp = fingerprint(windows, seed=c.seed, shuffle=shuffle)
    return DataStream(dataset, dataset.get_dataset_size(), fp)


class _Windows:
    def __init__(self, windows: np.ndarray) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[np.ndarray]:
        return (self.windows[index],)
