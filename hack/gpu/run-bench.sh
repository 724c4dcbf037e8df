#!/usr/bin/env bash
# One command on the GPU machine (no network; its image has jax/flax/optax/orbax/tensorboard): install the
# carried wheels (hack/gpu/download-wheels.sh) into a private --target dir and run the accelerator benchmark
# with the repository's trainer and contract on PYTHONPATH.
#   bash hack/gpu/run-bench.sh [bench args...]      e.g. --variant batch_size=16 --time_budget_s 380
# Env: WHEELS (default .cache/gpu-wheels), SITE (default /tmp/pax-gpu-site), PYTHON (default python3),
#      OUT (if set: the JSON result, the log and the first variant's profiler trace are written there too).
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=${WHEELS:-.cache/gpu-wheels}
SITE=${SITE:-/tmp/pax-gpu-site}
PYTHON=${PYTHON:-python3}
ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "no wheels in $WHEELS: run hack/gpu/download-wheels.sh" >&2; exit 1; }
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$PWD/trainer:$PWD/contract:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
"$PYTHON" -c 'import jax, flax, optax; print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, jax.devices())'
json_args=()
[[ -n "${OUT:-}" ]] && json_args=(--json "$OUT/bench.json" --profile_copy "$OUT/step.xplane.pb")
set -o pipefail
"$PYTHON" -m pax_trainer.bench --accelerator "${json_args[@]}" "$@" 2>&1 | tee ${OUT:+"$OUT/bench.log"}
