"""Helpers shared by the tests and the scripts: nothing here is a test, and nothing here imports one.

| module | what |
| --- | --- |
| `poll` | the deadline poll (`wait_for`, `poll`) |
| `manifests` | the TrainingJob manifest builder, the played kubelet's pod status |
| `kube` | API shortcuts for TrainingJobs and their pods; a controller run in-process |
| `e2e` | the e2e trainer run (run.yaml), its TrainingJob and its loss records |
| `fixtures` | pytest fixtures shared by e2e tests (a plugin, see tests/conftest.py) |
| `nodeagent` | the node agent as a subprocess, and its pytest fixtures (a plugin) |
| `chaos` | the chaos soak harness (tests/e2e/test_chaos.py, scripts/chaos_soak.py) |
| `trainer` | tiny trainer configs and trainer processes |
| `outputs` | hand-made job output dirs: steps.jsonl and committed checkpoints |
| `deploy` | the chart and manifests' paths, rendered objects, the controller run as a ServiceAccount |
| `informer` | an informer event recorder |
| `core_inputs` | inputs of the controller's pure core, for its table tests |
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
