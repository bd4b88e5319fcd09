"""TEST-ONLY stand-in for `hyper_parallel`, which no package registry serves.

MindFormers 2.0.0 requires `hyper-parallel~=1.0.0` and imports names from it when `mindformers` is
imported (its PyNative models and parallel plans), but what the tests run of it — the resume code,
the CheckpointMonitor, the legacy llama under the graph-mode Trainer on CPU — never uses them. This
package only gets `import mindformers` past those imports: each name is an inert class
(`_standin.standin`). It is never installed: tests/support/mindformers.py puts its parent directory
on PYTHONPATH for the tests' MindFormers processes only. Names guarded by `try/except ImportError` in
MindFormers are left out, so MindFormers takes its own "not available" path for them.
"""

from hyper_parallel._standin import standin

DFunction = standin(__name__, "DFunction")
DTensor = standin(__name__, "DTensor")
DeviceMesh = standin(__name__, "DeviceMesh")
PipelineStage = standin(__name__, "PipelineStage")
SkipDTensorDispatch = standin(__name__, "SkipDTensorDispatch")
shard_module = standin(__name__, "shard_module")
