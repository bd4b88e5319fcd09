"""Where the controller meets the world: the reconcile pass reads caches, asks the core and applies
its plan; `kubewriter` is the only writer to the API server; `checkpoint_observer` watches the
shared volume; `metrics` exports what happened to Prometheus."""
