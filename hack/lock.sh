#!/usr/bin/env bash
# requirements/*.txt from pyproject.toml: every package pinned, with the hashes of its files on PyPI.
# The images (Dockerfile) and the development environment (Makefile) install only from these.
#   controller.txt  the runtime dependencies (the controller image)
#   trainer.txt     + the trainer extra (the trainer image)
#   dev.txt         + every extra (tests, tools)
# Run from the repository root after changing a pin in pyproject.toml: `make lock`.
set -euo pipefail
compile=${LOCK_PIP_COMPILE:-.venv/bin/pip-compile}
run() {
  # Resolved against the index only: a local --find-links directory would leak into the files.
  env -u PIP_FIND_LINKS "$compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --no-header "$@" pyproject.toml
}
run --output-file requirements/controller.txt
run --extra trainer --output-file requirements/trainer.txt
run --all-extras --output-file requirements/dev.txt
