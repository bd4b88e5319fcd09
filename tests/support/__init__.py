"""Helpers shared by the tests and the scripts: nothing here is a test, and nothing here imports one
(pyproject.toml's import-linter contracts check it).

| module | what |
| --- | --- |
| `poll` | the deadline poll (`wait_for`, `poll`) |
| `manifests` | the TrainingJob manifest builder, the played kubelet's pod status |
| `kube` | API shortcuts for TrainingJobs and their pods; a controller run in-process; a pod watch |
| `e2e` | the e2e trainer run (run.yaml), its TrainingJob and its loss records |
| `fixtures` | e2e fixtures: the shared root, a controller reading it (a plugin, see tests/conftest.py) |
| `nodeagent` | the node agent as a subprocess, and its pytest fixtures (a plugin) |
| `chaos` | the chaos soak harness (tests/e2e/test_chaos.py, scripts/chaos_soak.py) |
| `trainer` | tiny trainer configs, trainer processes alone or as a data-parallel gang |
| `grpo` | the tiny GRPO config, `python -m trainer_image.grpo` processes, their step records |
| `outputs` | hand-made job output dirs: steps.jsonl and committed checkpoints |
| `deploy` | the chart's paths, rendered objects, the controller run as a ServiceAccount, RBAC reviews |
| `informer` | an informer event recorder |
| `core_inputs` | inputs of the controller's pure core, for its table tests |
| `mindformers` | real MindFormers 2.0.0: its venv, the TEST-ONLY stand-in and CPU launcher |
| `lintcontracts` | the import-linter contract that no module imports a test module |
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
