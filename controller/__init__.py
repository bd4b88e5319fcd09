"""The respawn controller: reconciles TrainingJobs, restarting failed gangs from their last
complete checkpoint.

Layers, each importing only the ones after it (import-linter checks this; see
docs/architecture.md):

- `app`, `__main__`: wiring and the command line.
- `adapters`: the reconcile pass (caches in, plan applied), the API writer, the checkpoint
  observer and the metrics.
- `core`: the pure decision, `decide()` -> `Plan`, with its policies in `core.policy`.
- `api`: typed views of TrainingJob bodies.

`runtime` (informers, work queue, leader election, probes) is generic and knows no TrainingJob;
`respawn_protocol` is what the controller shares with the trainer and the CLI.
"""
