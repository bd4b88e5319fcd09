"""The respawn controller: reconciles TrainingJobs, restarting failed gangs from their last
complete checkpoint. Layers: `api` (types) -> `reconcile` (pure decisions) -> `reconciler`
(one pass against caches) -> `runtime` (informers, queue, lease, probes) -> `app` (wiring)."""
