"""The controller's generic runtime: everything between the Kubernetes API and the reconcile logic.

Modules (nouns, one concern each; import what you need, nothing starts on import):

- `informer`: per-kind cache kept current by list+watch, with event handlers; `store`: the cache
  and its indexes.
- `workqueue`: de-duplicating key queue with delayed and rate-limited re-adds.
- `leader`: Lease-based leader election.
- `health`: `/healthz`, `/readyz` and `/metrics` on one HTTP server.
- `logs`: JSON-lines logging.
- `clock`: real and fake time, so tests do not sleep.

Nothing here knows about TrainingJobs (an import-linter contract checks it): the adapters and
`controller.app` wire these to the core.

Why hand-written, rather than the client's helpers or a framework:

- Informer and work queue: the official Python client has neither. Its `watch.Watch` streams one
  watch; it keeps no cache, no indexes, does not relist on 410 Gone, and does not resume from the
  last resourceVersion after a dropped connection. client-go's informer/workqueue semantics are
  what a level-triggered controller needs, so they are reproduced here, small and tested.
- Leader election: `kubernetes.leaderelection` (client 37) measures lease expiry and the renew
  deadline with the wall clock (`time.time()`), so a clock step moves both; its Lease reads and
  updates carry no request timeout, so a hung API server stretches a renewal past the lease (the
  chaos soak hit exactly this: two leaders); it never releases the lease on shutdown, and its
  acquire loop cannot be stopped. `leader` keeps client-go's rules with a monotonic clock, cuts
  every request at the renew deadline and releases on stop.
- kopf: a framework with its own asyncio loop and edge-triggered handlers (on create/update/
  delete) that keeps handler progress in annotations on the watched objects and elects its
  leader through its own peering CRDs. respawn's design is the opposite: one level-triggered pass
  over cached state, restarts recorded in status, a standard Lease, and no writes to the user's
  object outside status.
"""
