"""TEST-ONLY stand-in (tests/support/mindformers_standin/hyper_parallel/__init__.py says why)."""

from hyper_parallel._standin import standin

CheckpointPolicy = standin(__name__, "CheckpointPolicy")
SwapManager = standin(__name__, "SwapManager")
checkpoint_wrapper = standin(__name__, "checkpoint_wrapper")
swap_wrapper = standin(__name__, "swap_wrapper")
