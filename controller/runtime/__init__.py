"""The controller's generic runtime: everything between the Kubernetes API and the reconcile logic.

Modules (nouns, one concern each; import what you need, nothing starts on import):

- `informer`: per-kind cache kept current by list+watch, with indexes and event handlers.
- `workqueue`: de-duplicating key queue with delayed and rate-limited re-adds.
- `leader`: Lease-based leader election.
- `health`: `/healthz`, `/readyz` and `/metrics` on one HTTP server.
- `logs`: JSON-lines logging.
- `clock`: real and fake time, so tests do not sleep.

Nothing here knows about TrainingJobs: the reconcile core and `__main__` wire these together.
"""
