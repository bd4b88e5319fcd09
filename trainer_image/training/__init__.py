"""Training one rank: the loop, where it resumes from (resume), the model, data, the MindSpore
backend, data parallelism and stopping on request."""
