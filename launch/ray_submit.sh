#!/usr/bin/env bash
# A whole job on a running Ray cluster (KubeRay, `ray start --head`, or launch/slurm_ray.sbatch):
#   RAY_ADDRESS=http://HEAD:8265 launch/ray_submit.sh --video /data/film.mp4 --audio /data/dub.wav \
#       -o /data/out/film.mp4 --weights /weights farm.replicas=8 farm.gpus_per_replica=1
# Inputs, weights and the job store must be reachable from every node (shared volume or URLs).
# The submission returns when the job ends; re-submitting the same command resumes it.
set -euo pipefail
address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
exec ray job submit --address "${address}" -- \
  python -m infinitetalk_dist.launch.ray_job run device=cuda dtype=bfloat16 "$@"
