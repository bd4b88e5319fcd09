"""TEST-ONLY stand-in (tests/support/mindformers_standin/hyper_parallel/__init__.py says why)."""

from hyper_parallel._standin import standin

CPUOffloadPolicy = standin(__name__, "CPUOffloadPolicy")
OffloadPolicy = standin(__name__, "OffloadPolicy")
