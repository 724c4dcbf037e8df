#!/usr/bin/env bash
# Wheels the benchmark's GPU machine lacks (its image: Python 3.12, jax 0.11.2 CUDA 13, flax, optax, orbax,
# tensorboard; no grain, clu, pyglove, tensorboardX, no network). Fetched here, carried there, installed by
# hack/gpu/run-bench.sh with `pip install --no-index --target`. Versions are pyproject.toml's pins.
# Usage: bash hack/gpu/download-wheels.sh [DEST]   (default .cache/gpu-wheels, git-ignored)
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=${1:-.cache/gpu-wheels}
PY=${PY:-.venv/bin/python}
mkdir -p "$DEST"

pin() {  # the exact pin of $1 in pyproject.toml
  grep -oE "\"$1==[^\"]+\"" pyproject.toml | head -1 | tr -d '"'
}

# Pinned in pyproject (flax/optax/orbax are carried too, so the trainer runs the versions it is tested with).
PINNED=(flax optax orbax-checkpoint clu pyglove grain tensorboardX)
# Their dependencies missing from the image (versions as installed by `make setup`).
DEPS=(array-record portpicker ml-collections docstring-parser termcolor)

specs=()
for name in "${PINNED[@]}"; do
  spec=$(pin "$name")
  [[ -n "$spec" ]] || { echo "no pin for $name in pyproject.toml" >&2; exit 1; }
  specs+=("$spec")
done
for name in "${DEPS[@]}"; do
  version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  [[ -n "$version" ]] || { echo "$name is not installed in $PY (run make setup)" >&2; exit 1; }
  specs+=("$name==$version")
done

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$DEST" "${specs[@]}"
du -sh "$DEST"
ls "$DEST"
