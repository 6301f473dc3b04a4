#!/usr/bin/env bash
# One window on one replica of every local GPU (Ulysses sequence parallelism + FSDP2):
#   launch/torchrun.sh --weights /weights --image face.jpg --audio speech.wav -o talk.mp4
# GPUS=N picks the process count (default: all GPUs nvidia-smi lists); extra arguments are
# `infinitetalk-dist generate` flags and key=value overrides (parallel.cfg=2 for CFG-parallel).
set -euo pipefail
gpus="${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}"
if [ "${gpus}" -lt 1 ]; then
  echo "launch/torchrun.sh: no GPU found (set GPUS=N to choose the process count)" >&2
  exit 2
fi
exec torchrun --standalone --nproc_per_node "${gpus}" -m infinitetalk_dist.launch.torchrun generate \
  device=cuda dtype=bfloat16 "$@"
