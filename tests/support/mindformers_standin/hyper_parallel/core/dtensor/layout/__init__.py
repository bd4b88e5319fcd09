"""TEST-ONLY stand-in (tests/support/mindformers_standin/hyper_parallel/__init__.py says why)."""

from hyper_parallel._standin import standin

_infer_slice_area_by_rank = standin(__name__, "_infer_slice_area_by_rank")
