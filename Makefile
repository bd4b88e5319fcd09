# respawn — developer entry points. Every target installs what it needs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test lint typecheck unit assets mindformers cluster clean

# A Python environment with the project and every locked dependency: exact versions with their
# hashes (requirements/dev.txt), nothing resolved at install time. Rebuilt when either changes.
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# requirements/*.txt re-resolved from pyproject.toml's pins, with hashes (hack/lock.sh).
.PHONY: lock
lock: $(VENV)/.installed
	bash hack/lock.sh

# etcd, kube-apiserver, kube-controller-manager built from Go modules; cached outside the repo.
assets: $(VENV)/.installed
	$(BIN)/python -m devcluster assets

# The real MindFormers 2.0.0 for the interop tests, in a venv of its own built from the hashed lock
# requirements/mindformers.txt; cached outside the repo, keyed by the lock (tests/support/mindformers.py).
mindformers: $(VENV)/.installed
	$(BIN)/python -m tests.support.mindformers

# The SeaweedFS server (`weed`) the checkpoint-store tests run, built from the Go module pinned in
# hack/seaweedfs/; cached outside the repo, keyed by that go.mod/go.sum (devcluster/seaweedfs.py).
.PHONY: objectstore
objectstore: $(VENV)/.installed
	$(BIN)/python -m devcluster.seaweedfs

# Style, then the layer contracts in pyproject.toml (docs/architecture.md).
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: $(VENV)/.installed
	$(BIN)/mypy

# The whole suite: lint, types, then every test against a real API server. What the tests need is
# made side by side: the Go builds use the cores while the MindFormers venv mostly waits on the disk.
test: $(VENV)/.installed
	$(MAKE) --no-print-directory -j5 --output-sync=line lint typecheck assets mindformers objectstore
	$(BIN)/pytest $(PYTEST_ARGS)

# A local cluster in the foreground; prints the kubeconfig path. Ctrl-C stops it.
cluster: assets
	$(BIN)/python -m devcluster cluster

demo: assets
	$(BIN)/python scripts/demo.py

clean:
	rm -rf .devcluster .mypy_cache .ruff_cache .pytest_cache

# deploy/respawn.yaml and the chart's copy of deploy/crds/, regenerated from helm/respawn.
.PHONY: manifests
manifests: assets
	$(BIN)/python hack/helm/manifests.py
