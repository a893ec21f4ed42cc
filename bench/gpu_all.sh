#!/usr/bin/env bash
# The GPU benchmark set in one go, in under 10 minutes on an H100-class card: bench/gpu_step.py on
# the full-size FLUX.1 Kontext transformer at 512 and 1024 px, LoRA rank 16, with an int8-quanto base
# and with a bf16 base, each also timed the diffusers training example's way (--peer). Prints it/s,
# s/step, peak GPU memory, model TFLOP per step and MFU; writes JSON under $GPU_ALL_OUT.
#
#   bench/gpu_all.sh                                   # on a GPU
#   bench/gpu_all.sh --device cpu --tiny --steps 1     # CPU smoke run of the same path (CI)
#
# Extra arguments go to every gpu_step.py call. Each call is bounded (GPU_ALL_TIMEOUT seconds, default
# 280) so the whole set stays under 10 minutes even on a slow card.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
OUT="${GPU_ALL_OUT:-artifacts/bench}"
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "no nvidia-smi"
status=0
for precision in int8-quanto no_change; do
  echo "== base ${precision} (no_change = bf16), LoRA rank 16"
  timeout "${GPU_ALL_TIMEOUT:-280}" "$PY" bench/gpu_step.py --precision "$precision" --rank 16 --peer \
    --json "$OUT/gpu_step_${precision}.json" "$@" || status=$?
done
exit "$status"
