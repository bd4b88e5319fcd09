"""TEST-ONLY stand-in (tests/support/mindformers_standin/hyper_parallel/__init__.py says why)."""

from hyper_parallel._standin import standin

HSDPModule = standin(__name__, "HSDPModule")
MixedPrecisionPolicy = standin(__name__, "MixedPrecisionPolicy")
fully_shard = standin(__name__, "fully_shard")
