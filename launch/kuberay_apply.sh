#!/usr/bin/env bash
# Render a job's KubeRay manifests from the job config and apply them (a RayJob with its own
# cluster, the PodMonitor and the Grafana dashboard):
#   launch/kuberay_apply.sh --video /data/in/film.mp4 --audio /data/in/dub.wav -o /data/out/film.mp4 \
#       --weights /weights --sampler lightx2v farm.replicas=4 farm.gpus_per_replica=2
# OUT=DIR keeps the manifests there (default: a temporary folder); DRY_RUN=1 only renders them.
set -euo pipefail
out="${OUT:-$(mktemp -d)}"
infinitetalk-dist k8s render farm=ray device=cuda dtype=bfloat16 "$@" "k8s.out=${out}"
if [ "${DRY_RUN:-0}" = "1" ]; then
  echo "rendered into ${out} (DRY_RUN=1: nothing applied)"
  exit 0
fi
kubectl apply -f "${out}"/rayjob-*.yaml -f "${out}/podmonitor.yaml" -f "${out}/grafana-dashboard.yaml"
echo "applied from ${out}; watch: kubectl get rayjobs -A -l app.kubernetes.io/name=infinitetalk-dist"
