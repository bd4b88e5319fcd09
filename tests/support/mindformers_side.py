"""Run by tests/trainer/test_mindformers_interop.py with MindFormers' own interpreter
(tests.support.mindformers): MindFormers 2.0.0's real checkpoint writer and resume resolver.

    python -P mindformers_side.py write '{"output_dir": ..., "rank": 0, "steps": 6, ...}'
    python -P mindformers_side.py resolve '{"checkpoint_dir": ..., "resume_training": true, ...}'

`write` drives MindFormers' `CheckpointMonitor` (its real save path: MindSpore's ModelCheckpoint
with MindFormers' names, `_K` run suffix, `meta.json` via `record_last_ckpt_to_json`, weights-only
copies in `checkpoint_network/`) from MindSpore's `Model.train` over a tiny network, not its whole
`Trainer` (which needs a tokenizer, a model config and two CPU patches, and takes minutes). A run
that resumes loads the named file into the network and optimizer first and trains in a new
`Model.train`, so its files restart their (epoch, step) numbering, as a resumed MindFormers Trainer's
do (shared/notes/mindformers.md), while the global step recorded in each file continues.

`resolve` calls `mindformers.tools.resume_ckpt.get_resume_checkpoint` as the Trainer does, as rank 0
(which computes the answer for every rank), and says which file each rank would then load: rank 0's
name with the rank substituted, or, for `True` (no meta.json), each rank's newest file by mtime, as
MindFormers' `load_distributed_checkpoint` takes it. It also tries to load each of those files.

Prints one JSON object on its last line. Run it with `python -P` (this folder holds
tests/support/mindformers.py, which would shadow the package) in a scratch working directory:
MindFormers writes `./output/` there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def write(args: dict[str, Any]) -> dict[str, Any]:
    os.environ["RANK_ID"] = str(args["rank"])
    import mindspore as ms
    import numpy as np
    from mindformers.core.callback.callback import CheckpointMonitor
    from mindspore import nn
    from mindspore.dataset import GeneratorDataset

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    ms.set_seed(1)
    net = nn.Dense(4, 2)
    optimizer = nn.AdamWeightDecay(net.trainable_params(), learning_rate=1e-3)
    if args.get("load"):
        ms.load_param_into_net(net, ms.load_checkpoint(args["load"]))
        ms.load_param_into_net(optimizer, ms.load_checkpoint(args["load"]))
    loss_net = nn.WithLossCell(net, nn.MSELoss())
    train = nn.TrainOneStepCell(loss_net, optimizer)
    rng = np.random.default_rng(args["rank"])
    rows = [(rng.random(4, dtype=np.float32), rng.random(2, dtype=np.float32)) for _ in range(args["steps"])]
    data = GeneratorDataset(rows, ["x", "y"], shuffle=False).batch(1)
    monitor = CheckpointMonitor(
        prefix=args.get("prefix", "CKP"),
        directory=args["output_dir"],
        save_checkpoint_steps=args.get("save_every", 1),
        keep_checkpoint_max=args.get("keep", 5),
        checkpoint_format=args.get("format", "ckpt"),
        save_network_params=args.get("network", True),
    )
    model = ms.train.Model(train)
    model.train(1, data, callbacks=[monitor], dataset_sink_mode=False)
    return {"global_step": int(optimizer.global_step.asnumpy()[0])}


def resolve(args: dict[str, Any]) -> dict[str, Any]:
    os.environ["RANK_ID"] = "0"
    os.environ.pop("RANK_SIZE", None)  # one process answers for every rank: no barrier to wait at
    import mindspore as ms
    from mindformers.tools.resume_ckpt import get_resume_checkpoint
    from mindformers.tools.utils import replace_rank_id_in_ckpt_name
    from mindformers.utils.load_checkpoint_utils import get_last_checkpoint

    root = Path(args["checkpoint_dir"])
    fmt = args.get("format", "ckpt")
    ranks = sorted(int(p.name[5:]) for p in root.glob("rank_*"))
    try:
        answer = get_resume_checkpoint(str(root), args["resume_training"], ckpt_format=fmt)
    except Exception as e:  # MindFormers refuses: say how
        return {"answer": None, "error": f"{type(e).__name__}: {e}", "files": {}, "loadable": {}}
    files: dict[int, str | None] = {}
    for rank in ranks:
        if answer is True:
            files[rank] = get_last_checkpoint(str(root / f"rank_{rank}"), fmt)
        else:
            files[rank] = str(root / f"rank_{rank}" / replace_rank_id_in_ckpt_name(answer, rank))
    loadable: dict[int, str] = {}
    for rank, path in files.items():
        try:
            ms.load_checkpoint(path, format=fmt)
            loadable[rank] = "ok"
        except Exception as e:
            loadable[rank] = f"{type(e).__name__}: {e}"[:300]
    return {"answer": answer, "error": None, "files": files, "loadable": loadable}


def resolve_many(args: dict[str, Any]) -> dict[str, Any]:
    """`resolve` for each of `requests`, in one process (importing MindFormers takes seconds)."""
    return {"results": [resolve(request) for request in args["requests"]]}


if __name__ == "__main__":
    command, payload = sys.argv[1], json.loads(sys.argv[2])
    result = {"write": write, "resolve": resolve, "resolve_many": resolve_many}[command](payload)
    print(json.dumps(result))
