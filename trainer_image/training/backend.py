"""Everything that touches MindSpore: context, the training cell, one step, save and load.

The training cell holds weights, optimizer moments, the optimizer's global step (which drives the LR)
and the dynamic loss-scale state, so saving it whole captures all of them. The loop's own counters
travel as `respawn.*` extras in the same file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from respawn_protocol.flat import sharded_parts
from trainer_image.checkpoint.progress import EXTRA_PREFIX, CheckpointMismatch, Progress
from trainer_image.checkpoint.rescale import rescale_steps
from trainer_image.checkpoint.snapshot import Snapshot
from trainer_image.config import CheckpointFormat, LrSchedule, TrainerConfig
from trainer_image.training.model import CausalLMLoss, build_model
from trainer_image.training.parallel import split_owners


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
    """One optimizer step with a dynamic loss scale; also returns the LR it used.

    Holds (and names, for the checkpoint) the whole training state. Backend runs the step as two
    graphs, GradStep then ApplyStep, so that a snapshot's copy can overlap the gradient computation;
    this fused construct is the reference they are tested and benchmarked against."""

    def get_overflow_status(self, status, compute_output):
        # The base class asks for an NPU status register, which has no CPU kernel.
        return ops.logical_not(ms.amp.all_finite(compute_output))

    def construct(self, *inputs):
        lr = self.optimizer.get_lr()
        loss, overflow, scale = super().construct(*inputs)
        return loss, overflow, scale, lr


_grad_scale = ops.MultitypeFuncGraph("grad_scale")


@_grad_scale.register("Tensor", "Tensor")
def _unscale(scale, grad):
    return grad * ops.cast(ops.reciprocal(scale), ops.dtype(grad))


class GradStep(nn.Cell):
    """Loss, unscaled (and reduced) gradients, overflow flag and LR. Writes no parameter."""

    def __init__(self, train: TrainStep) -> None:
        super().__init__(auto_prefix=False)  # keep the parameters' names
        self.network = train.network
        self.weights = train.weights
        self.grad = train.grad
        self.grad_reducer = train.grad_reducer
        self.optimizer = train.optimizer
        self.scale_sense = train.scale_sense
        self.hyper_map = ops.HyperMap()

    def construct(self, *inputs):
        lr = self.optimizer.get_lr()
        loss = self.network(*inputs)
        scale = self.scale_sense
        sens = ops.ones_like(loss) * ops.cast(scale, ops.dtype(loss))
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(self.hyper_map(ops.partial(_grad_scale, scale), grads))
        overflow = ops.logical_not(ms.amp.all_finite(grads))
        return loss, grads, overflow, lr


class ApplyStep(nn.Cell):
    """Update the loss scale; unless the gradients overflowed, the optimizer step. Returns the new scale."""

    def __init__(self, train: TrainStep) -> None:
        super().__init__(auto_prefix=False)
        self.optimizer = train.optimizer
        self.scale_sense = train.scale_sense
        self.loss_scaling_manager = train.loss_scaling_manager

    def construct(self, grads, overflow):
        overflow = self.loss_scaling_manager(self.scale_sense, overflow)
        if not overflow:
            overflow = ops.depend(overflow, self.optimizer(grads))
        return ops.depend(self.scale_sense, overflow)


class Backend:
    def __init__(self, config: TrainerConfig, *, total_steps: int) -> None:
        ms.set_context(mode=config.context.mode, device_target=config.context.device_target)
        ms.set_seed(config.seed)
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
        self.grad_step = GradStep(self.cell)
        self.apply_step = ApplyStep(self.cell)
        self.network_names = {p.name for p in self.model.get_parameters()}
        self._buffers: dict[str, np.ndarray] = {}
        self._pending: Snapshot | None = None  # its copy must finish before the next optimizer update
        self.copy_waited = 0.0  # seconds steps have waited for snapshot copies: part of a save's cost
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
        loss, grads, overflow, lr = self.grad_step(*inputs)
        if self._pending is not None:  # the optimizer must not write what a snapshot still reads
            waited = time.perf_counter()
            self._pending.wait_copied()
            self.copy_waited += time.perf_counter() - waited
            self._pending = None
        # mutable: a tuple argument is otherwise a constant, and the graph recompiles on every call
        scale = self.apply_step(ms.mutable(grads), overflow)
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

    def snapshot(self) -> Snapshot:
        """Views of the parameters and reused host buffers for them; the caller's writer thread copies
        (`Snapshot.copy`) while the next step computes gradients, and that step's optimizer update
        waits for the copy. Call between steps."""
        sources, arrays = {}, {}
        for param in self.cell.get_parameters():
            if self.owned is not None and param.name not in self.owned:
                continue
            live = param.asnumpy()  # on CPU a view of the parameter's memory, updated in place
            buf = self._buffers.get(param.name)
            if buf is None or buf.shape != live.shape or buf.dtype != live.dtype:
                buf = self._buffers[param.name] = np.empty_like(live)
            sources[param.name], arrays[param.name] = live, buf
        self._pending = Snapshot(sources, arrays)
        return self._pending

    def write_snapshot(
        self, snap: Snapshot, path: Path, fmt: CheckpointFormat, progress: Progress | None
    ) -> None:
        """Write a copied snapshot (all of it, or only the network when `progress` is None). Thread-safe."""
        items = [
            {"name": name, "data": Tensor.from_numpy(arr)}
            for name, arr in snap.arrays.items()
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
        params = read_checkpoint(path)
        extras = {k: int(params.pop(k).asnumpy()) for k in list(params) if k.startswith(EXTRA_PREFIX)}
        target = self.model if weights_only else self.cell
        wanted = {p.name for p in target.get_parameters()}
        for sibling in siblings:
            if wanted <= params.keys():
                break
            for name, value in read_checkpoint(sibling).items():
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


def read_checkpoint(path: Path) -> dict:
    """Every entry of a checkpoint file (parameters and `respawn.*` extras), or of the parts of
    MindSpore's merged safetensors in a directory; CheckpointDamaged if one does not parse."""
    try:
        if path.is_dir():
            parts = sharded_parts(path) or []
            return {
                k: v for part in parts for k, v in ms.load_checkpoint(str(part), format="safetensors").items()
            }
        fmt = "safetensors" if path.suffix == ".safetensors" else "ckpt"
        return ms.load_checkpoint(str(path), format=fmt)
    except (RuntimeError, ValueError, OSError, TypeError) as e:
        raise CheckpointDamaged(path, f"{path}: {e}") from e
