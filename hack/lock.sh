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

# The real MindFormers for the interop tests (requirements/mindformers.in says why it is apart):
# its requirements resolved, then mindformers itself with the hash of its one wheel.
mindformers=mindformers==2.0.0
env -u PIP_FIND_LINKS "$compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
  --no-emit-index-url --no-emit-find-links --no-header \
  --output-file requirements/mindformers.txt requirements/mindformers.in
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
env -u PIP_FIND_LINKS "$(dirname "$compile")/pip" download --quiet --no-deps -d "$wheels" "$mindformers"
{
  echo "$mindformers \\"
  "$(dirname "$compile")/pip" hash "$wheels"/* | sed -n 's/^--hash=/    --hash=/p'
  echo "    # via requirements/mindformers.in (installed without its dependencies: hack/lock.sh)"
} >>requirements/mindformers.txt

# boto3 and its own dependencies at the pins of requirements/store.in (which says why they are not
# resolved with the rest), each with the hash of its wheel, in the trainer's and the development set.
mkdir "$wheels/store"
grep -v -e '^\s*#' -e '^\s*$' requirements/store.in \
  | env -u PIP_FIND_LINKS xargs "$(dirname "$compile")/pip" download --quiet --no-deps --only-binary=:all: -d "$wheels/store"
for out in requirements/trainer.txt requirements/dev.txt; do
  for wheel in "$wheels"/store/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1 | tr _ -)
    version=$(basename "$wheel" | cut -d- -f2)
    echo "$name==$version \\"
    "$(dirname "$compile")/pip" hash "$wheel" | sed -n 's/^--hash=/    --hash=/p'
    echo "    # via requirements/store.in (installed without resolving: hack/lock.sh)"
  done >>"$out"
done
