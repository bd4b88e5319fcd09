"""The reconcile layer: a pure `decide()` per pass, and the thin step that applies its plan."""
