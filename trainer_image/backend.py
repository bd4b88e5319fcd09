"""Everything that touches MindSpore: context, the training cell, one step, save and load.

The training cell holds weights, optimizer moments, the optimizer's global step (which drives the LR)
and the dynamic loss-scale state, so saving it whole captures all of them. The loop's own counters
travel as `respawn.*` extras in the same file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from trainer_image.config import CheckpointFormat, LrSchedule, TrainerConfig
from trainer_image.model import CausalLMLoss, build_model
from trainer_image.parallel import split_owners
from trainer_image.progress import EXTRA_PREFIX, CheckpointMismatch, Progress
from trainer_image.rescale import rescale_steps


class CheckpointDamaged(RuntimeError):
    """The file could not be parsed; the caller falls back to an older one."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class StepResult:
    loss: np.float32
    overflow: bool
    loss_scale: float
    lr: float


class WarmupDecayLR(nn.learning_rate_schedule.LearningRateSchedule):
    """Warm-up, then cosine / linear / constant decay: a pure function of the optimizer's global step."""

    def __init__(self, c: LrSchedule, total_steps: int) -> None:
        super().__init__()
        self.base = c.learning_rate
        self.end = c.lr_end
        self.warmup = float(c.warmup_steps)
        self.decay_steps = float(max(1, total_steps - c.warmup_steps))
        self.kind = c.type

    def construct(self, global_step):
        step = ops.cast(global_step, ms.float32)
        warm = ops.minimum((step + 1.0) / max(self.warmup, 1.0), 1.0) * self.base
        progress = ops.clamp((step - self.warmup) / self.decay_steps, 0.0, 1.0)
        if self.kind == "CosineWithWarmUpLR":
            decay = 0.5 * (1.0 + ops.cos(progress * math.pi))
        elif self.kind == "LinearWithWarmUpLR":
            decay = 1.0 - progress
        else:
            decay = ops.ones_like(progress)
        decayed = self.end + (self.base - self.end) * decay
        return ops.select(step < self.warmup, warm, decayed)


class TrainStep(nn.TrainOneStepWithLossScaleCell):
    """One optimizer step with a dynamic loss scale; also returns the LR it used."""

    def get_overflow_status(self, status, compute_output):
        # The base class asks for an NPU status register, which has no CPU kernel.
        return ops.logical_not(ms.amp.all_finite(compute_output))

    def construct(self, *inputs):
        lr = self.optimizer.get_lr()
        loss, overflow, scale = super().construct(*inputs)
        return loss, overflow, scale, lr


class Backend:
    def __init__(self, config: TrainerConfig, *, total_steps: int) -> None:
        ms.set_context(mode=config.context.mode, device_target=config.context.device_target)
        ms.set_seed(config.seed)
        self.config = config
        self.model = build_model(config.model)
        opt = config.optimizer
        optimizer = nn.AdamWeightDecay(
            self.model.trainable_params(),
            learning_rate=WarmupDecayLR(config.lr_schedule, total_steps),
            beta1=opt.betas[0],
            beta2=opt.betas[1],
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        s = config.runner_wrapper.scale_sense
        scale = nn.DynamicLossScaleUpdateCell(s.loss_scale_value, s.scale_factor, s.scale_window)
        self.cell = TrainStep(CausalLMLoss(self.model, config.model.vocab_size), optimizer, scale)
        self.cell.set_train()
        self.network_names = {p.name for p in self.model.get_parameters()}
        self._buffers: dict[str, np.ndarray] = {}
        self.owned: set[str] | None = None  # None: this rank saves every parameter

    def remove_redundancy(self, rank: int, world_size: int) -> dict[str, int]:
        """From now on save only this rank's share of the (data-parallel, identical) parameters."""
        sizes = {p.name: int(p.asnumpy().nbytes) for p in self.cell.get_parameters()}
        owners = split_owners(sizes, world_size)
        self.owned = {name for name, owner in owners.items() if owner == rank}
        return owners

    # ------------------------------------------------------------------------------------------ stepping

    def step(self, batch: np.ndarray, keep: np.ndarray | None) -> StepResult:
        inputs = [Tensor(batch)] + ([] if keep is None else [Tensor(keep)])
        loss, overflow, scale, lr = self.cell(*inputs)
        return StepResult(
            loss=np.float32(loss.asnumpy()),
            overflow=bool(overflow.asnumpy()),
            loss_scale=float(scale.asnumpy()),
            lr=float(np.asarray(lr.asnumpy()).reshape(-1)[0]),
        )

    # -------------------------------------------------------------------------------------------- saving

    def save(
        self, path: Path, fmt: CheckpointFormat, progress: Progress, *, network_only: bool = False
    ) -> None:
        """Synchronous save of the live cell, to a path the caller later publishes."""
        if self.owned is not None:
            params = [
                {"name": p.name, "data": p}
                for p in self.cell.get_parameters()
                if p.name in self.owned and (not network_only or p.name in self.network_names)
            ]
            if not network_only:
                params += [{"name": k, "data": Tensor(np.int64(v))} for k, v in progress.extras().items()]
            ms.save_checkpoint(params, str(path), format=fmt)
        elif network_only:
            ms.save_checkpoint(self.model, str(path), format=fmt)
        else:
            ms.save_checkpoint(self.cell, str(path), format=fmt, append_dict=dict(progress.extras()))

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copy every parameter into reused host buffers; the only part of an async save that blocks."""
        out = {}
        for param in self.cell.get_parameters():
            if self.owned is not None and param.name not in self.owned:
                continue
            live = param.asnumpy()
            buf = self._buffers.get(param.name)
            if buf is None or buf.shape != live.shape or buf.dtype != live.dtype:
                buf = self._buffers[param.name] = np.empty_like(live)
            np.copyto(buf, live)
            out[param.name] = buf
        return out

    def write_snapshot(
        self, snap: dict[str, np.ndarray], path: Path, fmt: CheckpointFormat, progress: Progress | None
    ) -> None:
        """Write a snapshot (all of it, or only the network when `progress` is None). Thread-safe."""
        items = [
            {"name": name, "data": Tensor.from_numpy(arr)}
            for name, arr in snap.items()
            if progress is not None or name in self.network_names
        ]
        if progress is not None:
            items += [{"name": k, "data": Tensor(np.int64(v))} for k, v in progress.extras().items()]
        ms.save_checkpoint(items, str(path), format=fmt)

    # ------------------------------------------------------------------------------------------- loading

    def load(
        self,
        path: Path,
        *,
        weights_only: bool,
        siblings: tuple[Path, ...] = (),
        global_batch_size: int = 0,
    ) -> Progress | None:
        """Load `path`; parameters it lacks (saved with remove_redundancy) come from `siblings`, the
        other ranks' files of the same step. With `global_batch_size`, a checkpoint saved with another
        one gets its optimizer step (which drives the LR) rescaled as MindFormers does."""
        params = _read(path)
        extras = {k: int(params.pop(k).asnumpy()) for k in list(params) if k.startswith(EXTRA_PREFIX)}
        target = self.model if weights_only else self.cell
        wanted = {p.name for p in target.get_parameters()}
        for sibling in siblings:
            if wanted <= params.keys():
                break
            for name, value in _read(sibling).items():
                if name in wanted and name not in params:
                    params[name] = value
        self._check_fit(path, params, target)
        if weights_only:
            params = {k: v for k, v in params.items() if k in self.network_names}
        saved_batch = extras.get(EXTRA_PREFIX + "global_batch_size", 0)
        if not weights_only and global_batch_size and saved_batch and saved_batch != global_batch_size:
            name = self.cell.optimizer.global_step.name
            steps = params[name].asnumpy().copy()
            steps[...] = rescale_steps(int(steps.reshape(-1)[0]), old=saved_batch, new=global_batch_size)
            params[name] = ms.Parameter(Tensor(steps), name=name)
        ms.load_param_into_net(target, params, strict_load=True)
        return None if weights_only else Progress.from_extras(extras)

    @staticmethod
    def _check_fit(path: Path, params: dict, target: nn.Cell) -> None:
        for param in target.get_parameters():
            found = params.get(param.name)
            if found is None:
                raise CheckpointMismatch(f"{path.name} has no parameter {param.name}; was the model changed?")
            if tuple(found.shape) != tuple(param.shape):
                raise CheckpointMismatch(
                    f"{path.name}: {param.name} has shape {tuple(found.shape)}, "
                    f"the model needs {tuple(param.shape)}"
                )


def _read(path: Path) -> dict:
    fmt = "safetensors" if path.suffix == ".safetensors" else "ckpt"
    try:
        return ms.load_checkpoint(str(path), format=fmt)
    except (RuntimeError, ValueError, OSError, TypeError) as e:
        raise CheckpointDamaged(path, f"{path}: {e}") from e
