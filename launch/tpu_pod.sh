#!/usr/bin/env bash
# Runs gensar_jax on every host of a cloud TPU VM pod slice.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b REPO=~/gensar_jax WORKDIR=/mnt/shared/electronics \
#     launch/tpu_pod.sh configs/amazon.py:category=Electronics,preset=paper [--config.x=y ...]
#
# Prerequisites: the repository cloned (same path) and `pip install -r requirements.txt`
# done on every worker (see the README), and WORKDIR on a filesystem all workers mount
# (e.g. a Filestore NFS share). jax.distributed.initialize() reads the pod's metadata.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
REPO=${REPO:-~/gensar_jax}
CONFIG=${1:?usage: $0 CONFIG [--config.field=value ...]}
shift
CMD=$(cd "$(dirname "$0")/.." && python3 -m launch.command --config="$CONFIG" --workdir="$WORKDIR" -- "$@")
echo "on every worker of $TPU_NAME: $CMD"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd $REPO && $CMD"
