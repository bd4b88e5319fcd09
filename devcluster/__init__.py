"""A local Kubernetes cluster for respawn's tests and demo: a real control plane built from Go
modules, plus a node agent that runs pods as local processes. A development tool, not a product."""
