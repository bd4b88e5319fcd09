"""What the controller, the trainer and the CLI agree on, in one place.

- `contract`: the environment the controller sets on a worker and the trainer's exit codes, with
  what each code means to the controller.
- `crd`: the TrainingJob API's group, version and the labels on its pods.
- `layout`: checkpoint file names and directories; `meta`: the per-rank commit record
  (meta.json); `digest`: the sha256 it records.
- `resolve`: which checkpoint a job resumes from, over `candidates` (what the rank folders hold) and
  `validity` (the size and sha256 checks); the trainer and the controller call the same code.
- `steplog`: steps.jsonl, the per-rank training log.

Light and dependency-free on purpose: the controller image ships this package, not MindSpore.
"""
