#!/usr/bin/env bash
# One run of the recipe study: a variant trained with a wall-clock budget on top of a base
# run's finished stages, evaluated on the 100-candidate protocol, and recorded.
#
#   CONFIG=configs/amazon.py:category=Office_Products,preset=cpu BASE=/tmp/office \
#     RUNS=/tmp/study OUT=launch/study/office MINUTES=15 \
#     launch/study.sh NAME "what the variant changes" [--config.x=y ...]
#
# BASE: a workdir whose data/embed/identifiers/doc2query stages are reused when this
# variant leaves them unchanged (others are recomputed under RUNS/NAME). Writes
# RUNS/NAME/train/curve.{json,png} and OUT/NAME.json (test metrics on the first EVAL_ROWS
# test rows per task, default 1000, exact ranking of the 100 candidates) (`python -m gensar_jax.experiments`);
# `python -m gensar_jax.experiments table OUT/*.json` prints the README's rows.
set -euo pipefail
: "${CONFIG:?set CONFIG}" "${BASE:?set BASE}" "${RUNS:?set RUNS}" "${OUT:?set OUT}"
NAME=${1:?usage: $0 NAME NOTE [--config.field=value ...]}
NOTE=${2:?usage: $0 NAME NOTE [--config.field=value ...]}
shift 2
MINUTES=${MINUTES:-15}
PYTHON=${PYTHON:-python}
ARGS=(--config="$CONFIG" --workdir="$RUNS/$NAME" --config.reuse_from="$BASE"
      --config.stages=data,embed,identifiers,doc2query,train,eval
      --config.train.max_minutes="$MINUTES" --config.eval.full_catalog=False
      --config.eval.compare=False --config.eval.max_examples="${EVAL_ROWS:-1000}" "$@")
"$PYTHON" -m gensar_jax.main "${ARGS[@]}"
mkdir -p "$OUT"
"$PYTHON" -m gensar_jax.experiments record --workdir="$RUNS/$NAME" --name="$NAME" \
  --note="$NOTE" --out="$OUT/$NAME.json" -- python -m gensar_jax.main "${ARGS[@]}"
