"""Everything of GRPO that touches MindSpore: the policy, the frozen reference, the loss, one update,
and the policy / optimizer files of a checkpoint.

The reference is a second instance of the same model, never in the training graph: its per-token
log-probabilities are computed once per rollout and fed to the loss as an input, like the
rollout policy's (the "old" log-probabilities of the clipped ratio).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from trainer_image.checkpoint.commit import publish, temp_path
from trainer_image.checkpoint.progress import EXTRA_PREFIX, CheckpointMismatch, Progress
from trainer_image.checkpoint.snapshot import Snapshot
from trainer_image.config import CheckpointFormat
from trainer_image.grpo.config import GrpoConfig
from trainer_image.grpo.saving import optimizer_path
from trainer_image.training.backend import CheckpointDamaged, WarmupDecayLR, read_checkpoint
from trainer_image.training.model import build_model

_NAMES_SHOWN = 12


class TokenLogProbs(nn.Cell):
    """log p(token t+1 | tokens <= t) for every position: (batch, seq - 1)."""

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, tokens):
        logits = self.model(tokens)[:, :-1]
        logp = ops.log_softmax(logits, -1)
        return ops.gather_elements(logp, 2, tokens[:, 1:].expand_dims(-1)).squeeze(-1)


class GrpoLoss(nn.Cell):
    """Clipped policy-gradient loss plus beta x the k3 estimate of KL(policy || reference), averaged
    over the completion tokens (`mask`); also returns the KL term alone."""

    def __init__(self, model: nn.Cell, *, beta: float, epsilon: float) -> None:
        super().__init__(auto_prefix=False)
        self.logprobs = TokenLogProbs(model)
        self.beta = beta
        self.low = 1.0 - epsilon
        self.high = 1.0 + epsilon

    def construct(self, tokens, mask, old_logp, ref_logp, advantages):
        logp = self.logprobs(tokens)
        ratio = ops.exp(logp - old_logp)
        adv = advantages.expand_dims(-1)
        surrogate = ops.minimum(ratio * adv, ops.clamp(ratio, self.low, self.high) * adv)
        delta = ref_logp - logp
        kl = ops.exp(delta) - delta - 1.0
        count = mask.sum()
        loss = ((kl * self.beta - surrogate) * mask).sum() / count
        return loss, (kl * mask).sum() / count


class GrpoUpdate(nn.TrainOneStepCell):
    """One optimizer update; the parent sets up the data-parallel gradient all-reduce."""

    def construct(self, *inputs):
        loss, kl = self.network(*inputs)
        sens = (ops.ones_like(loss), ops.zeros_like(kl))
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(grads)
        return ops.depend(loss, self.optimizer(grads)), kl


class GrpoBackend:
    def __init__(self, config: GrpoConfig, *, total_updates: int) -> None:
        ms.set_context(mode=config.context.mode, device_target=config.context.device_target)
        ms.set_seed(config.seed)
        self.policy = build_model(config.model)
        self.reference = build_model(config.model)  # weights come from the reference file
        for param in self.reference.get_parameters():
            param.requires_grad = False
        self.policy_logprobs = TokenLogProbs(self.policy)
        self.reference_logprobs = TokenLogProbs(self.reference)
        opt = config.optimizer
        schedule = config.lr_schedule
        optimizer = nn.AdamWeightDecay(
            self.policy.trainable_params(),
            learning_rate=WarmupDecayLR(
                schedule, schedule.total_steps if schedule.total_steps > 0 else total_updates
            ),
            beta1=opt.betas[0],
            beta2=opt.betas[1],
            eps=opt.eps,
            weight_decay=opt.weight_decay,
        )
        self.update_cell = GrpoUpdate(
            GrpoLoss(self.policy, beta=config.grpo.beta, epsilon=config.grpo.epsilon), optimizer
        )
        self.update_cell.set_train()
        self.optimizer = optimizer
        self.policy_names = [p.name for p in self.policy.get_parameters()]
        self.optimizer_names = [
            p.name for p in self.update_cell.get_parameters() if p.name not in set(self.policy_names)
        ]
        # Where the optimizer file of the step being written goes (saving.open_checkpointer).
        self.optimizer_target: Callable[[Progress], Path] | None = None

    # ---------------------------------------------------------------------------------------- compute

    def logits(self, tokens: np.ndarray) -> np.ndarray:
        return self.policy(Tensor(tokens)).asnumpy()

    def logprobs(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-token log-probabilities of the policy and of the reference."""
        t = Tensor(tokens)
        return self.policy_logprobs(t).asnumpy(), self.reference_logprobs(t).asnumpy()

    def update(
        self, tokens: np.ndarray, mask: np.ndarray, old: np.ndarray, ref: np.ndarray, adv: np.ndarray
    ) -> tuple[np.float32, np.float32, float]:
        lr = float(np.asarray(self.optimizer.get_lr().asnumpy()).reshape(-1)[0])
        loss, kl = self.update_cell(Tensor(tokens), Tensor(mask), Tensor(old), Tensor(ref), Tensor(adv))
        return np.float32(loss.asnumpy()), np.float32(kl.asnumpy()), lr

    # ----------------------------------------------------------------------------------------- saving

    def save(
        self, path: Path, fmt: CheckpointFormat, progress: Progress, *, network_only: bool = False
    ) -> None:
        """The checkpointer's writer: first the optimizer file, published under its final name, then
        the policy file (weights and progress) to the temp `path` the checkpointer publishes and
        records. A policy file under its final name therefore always has its optimizer file."""
        if network_only:
            raise ValueError("GRPO writes no weights-only copies (save_network_params: False)")
        if self.optimizer_target is None:
            raise RuntimeError("optimizer_target is not set")
        final = self.optimizer_target(progress)
        tmp = temp_path(final)
        ms.save_checkpoint(self._items(self.update_cell, self.optimizer_names), str(tmp), format=fmt)
        publish(tmp, final)
        items = self._items(self.policy, self.policy_names)
        items += [{"name": k, "data": Tensor(np.int64(v))} for k, v in progress.extras().items()]
        ms.save_checkpoint(items, str(path), format=fmt)

    def save_policy_weights(self, path: Path, fmt: CheckpointFormat) -> None:
        ms.save_checkpoint(self._items(self.policy, self.policy_names), str(path), format=fmt)

    @staticmethod
    def _items(cell: nn.Cell, names: Iterable[str]) -> list[dict]:
        wanted = set(names)
        return [{"name": p.name, "data": p} for p in cell.get_parameters() if p.name in wanted]

    def snapshot(self) -> Snapshot:
        raise NotImplementedError("GRPO saves synchronously")

    def write_snapshot(
        self, snap: Snapshot, path: Path, fmt: CheckpointFormat, progress: Progress | None
    ) -> None:
        raise NotImplementedError("GRPO saves synchronously")

    # ---------------------------------------------------------------------------------------- loading

    def load(
        self,
        path: Path,
        *,
        weights_only: bool,
        siblings: tuple[Path, ...] = (),
        global_batch_size: int = 0,
    ) -> Progress | None:
        """The policy from `path`; unless `weights_only`, the optimizer from its own file and the
        progress. A missing or unreadable optimizer file makes the step unusable (CheckpointDamaged:
        the caller falls back to an older step)."""
        params = read_checkpoint(path)
        extras = {k: int(params.pop(k).asnumpy()) for k in list(params) if k.startswith(EXTRA_PREFIX)}
        fit(path, params, self.policy, self.policy_names, what="the policy")
        ms.load_param_into_net(self.policy, params, strict_load=True)
        if weights_only:
            return None
        opt_file = optimizer_path(path)
        if not opt_file.is_file():
            raise CheckpointDamaged(path, f"{path}: its optimizer state {opt_file.name} is missing")
        opt = read_checkpoint(opt_file)
        fit(opt_file, opt, self.update_cell, self.optimizer_names, what="the optimizer")
        ms.load_param_into_net(self.optimizer, opt, strict_load=True)
        return Progress.from_extras(extras)

    def load_reference(self, path: Path) -> None:
        params = read_checkpoint(path)
        params = {k: v for k, v in params.items() if not k.startswith(EXTRA_PREFIX)}
        fit(path, params, self.reference, self.policy_names, what="the reference model")
        ms.load_param_into_net(self.reference, params, strict_load=True)


def fit(path: Path, params: dict, cell: nn.Cell, names: list[str], *, what: str) -> None:
    """CheckpointMismatch listing every parameter name that does not match, both ways (the
    model's names the file lacks, the file's names the model lacks), or a shape that differs."""
    missing = [n for n in names if n not in params]
    unexpected = sorted(set(params) - set(names))
    if missing:
        raise CheckpointMismatch(
            f"{path} does not fit {what}: the model's {_listed(missing)} not in the file; "
            + (f"the file's {_listed(unexpected)} not in the model" if unexpected else "nothing else differs")
            + " (was the model changed, or is this another kind of checkpoint?)"
        )
    wanted = set(names)
    for param in cell.get_parameters():
        if param.name in wanted and tuple(params[param.name].shape) != tuple(param.shape):
            raise CheckpointMismatch(
                f"{path} does not fit {what}: {param.name} has shape {tuple(params[param.name].shape)}, "
                f"the model needs {tuple(param.shape)}"
            )


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = len(names) - _NAMES_SHOWN
    return f"{len(names)} parameter name(s) [{shown}" + (f", and {more} more]" if more > 0 else "]")
