"""TEST-ONLY stand-in (tests/support/mindformers_standin/hyper_parallel/__init__.py says why)."""

from hyper_parallel._standin import standin

DTensor = standin(__name__, "DTensor")
distribute_tensor = standin(__name__, "distribute_tensor")
