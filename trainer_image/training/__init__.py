"""Training one rank: the loop, the model, data, the MindSpore backend, data parallelism and
stopping on request."""
