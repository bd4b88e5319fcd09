"""TEST-ONLY launcher: MindFormers' own `Trainer` training a tiny legacy llama on CPU, with the
command-line flags of MindFormers' `run_mindformer.py` that a resume needs.

    <mindformers python> tests/support/mindformers_cpu.py --output_dir DIR \
        [--load_checkpoint DIR_OR_FILE] [--resume_training True|False|FILE] [--steps N] [--save_steps N]

Run it with `tests.support.mindformers.mindformers_python()` and `mindformers_env()` (the TEST-ONLY
`hyper_parallel` stand-in on the path) from a scratch working directory. It is a script for that
interpreter: it imports nothing of this repository.

Two in-process patches, for CPU only, applied before the Trainer is built (MindFormers 2.0.0 targets
Ascend; neither touches checkpointing or resume):
- `llama_layer.check_rmsnorm_big_kernel_valid` returns False: there is no fused RmsNorm kernel on CPU.
- `TrainOneStepWithLossScaleCell.get_overflow_status` takes MindSpore's own inf/nan branch: the
  Ascend status op it would use (`FloatStatus` / `NPUGetFloatStatusV2`) has no CPU kernel.

The data are fixed token rows (no shuffle), so a resumed run sees the batches an uninterrupted one
would. A test-only callback appends one line per step to `<output_dir>/log/rank_<R>/losses.jsonl`:
`{"step": <the optimizer's global step after it>, "loss": <float>, "attempt": <RESPAWN_ATTEMPT or null>}`.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SEQ_LENGTH = 16
BATCH = 4
VOCAB = 64
SEED = 1


def patch_for_cpu() -> None:
    import mindformers.models.llama.llama_layer as llama_layer
    from mindspore.nn.wrap.loss_scale import TrainOneStepWithLossScaleCell, _ascend_grad_overflow

    llama_layer.check_rmsnorm_big_kernel_valid = lambda: False

    def get_overflow_status(self: Any, status: Any, compute_output: Any) -> Any:
        return self._get_distributed_overflow_status_on_infnan_mode(_ascend_grad_overflow, compute_output)

    TrainOneStepWithLossScaleCell.get_overflow_status = get_overflow_status


def loss_recorder(path: Path) -> Any:
    from mindspore.train.callback import Callback

    class LossRecorder(Callback):
        def on_train_step_end(self, run_context: Any) -> None:
            params = run_context.original_args()
            outputs = params.net_outputs
            loss = outputs[0] if isinstance(outputs, tuple | list) else outputs
            optimizer = params.optimizer or params.network.optimizer
            step = int(optimizer.global_step.asnumpy().reshape(-1)[0])
            with path.open("a") as f:
                value = float(loss.asnumpy().reshape(-1)[0])
                f.write(json.dumps({"step": step, "loss": value, "attempt": attempt}) + "\n")

    attempt = os.environ.get("RESPAWN_ATTEMPT")  # under the controller: which start wrote the line
    path.parent.mkdir(parents=True, exist_ok=True)
    return LossRecorder()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--load_checkpoint", default="")
    p.add_argument("--resume_training", default="False")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--save_steps", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    import mindspore as ms
    from mindspore.dataset import GeneratorDataset

    patch_for_cpu()
    from mindformers import Trainer, TrainingArguments
    from mindformers.models.llama import LlamaConfig, LlamaForCausalLM

    rows = np.random.default_rng(0).integers(
        0, VOCAB, size=(args.steps * BATCH, SEQ_LENGTH + 1), dtype=np.int32
    )
    data = GeneratorDataset([(row,) for row in rows], column_names=["input_ids"], shuffle=False)
    config = LlamaConfig(
        batch_size=BATCH,
        seq_length=SEQ_LENGTH,
        hidden_size=32,
        num_layers=1,  # MindFormers runs on CPU op by op (PyNative): fewer ops, faster steps
        num_heads=4,
        vocab_size=VOCAB,
        intermediate_size=64,
        compute_dtype="float32",
        layernorm_compute_type="float32",
        softmax_compute_type="float32",
        rotary_dtype="float32",
        param_init_type="float32",
        use_flash_attention=False,
        use_rope_slice=True,  # the default rotate-half is a BatchMatMul that CPU cannot broadcast
    )
    ms.set_seed(SEED)  # the weights are initialised here, before the Trainer seeds anything
    model = LlamaForCausalLM(config)
    training = TrainingArguments(
        output_dir=args.output_dir,
        seed=SEED,
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        save_steps=args.save_steps,
        save_total_limit=3,
        sink_mode=False,
        logging_steps=1,
        learning_rate=1e-3,
        use_cpu=True,
        device_target="CPU",
    )
    rank = os.environ.get("RANK_ID", "0")
    losses = loss_recorder(Path(args.output_dir) / "log" / f"rank_{rank}" / "losses.jsonl")
    trainer = Trainer(
        args=training,
        model=model,
        train_dataset=data.batch(BATCH, drop_remainder=True),
        callbacks=[losses],
    )
    resume = {"true": True, "false": False}.get(args.resume_training.lower(), args.resume_training)
    trainer.train(train_checkpoint=args.load_checkpoint or False, resume_training=resume)


if __name__ == "__main__":
    main()
