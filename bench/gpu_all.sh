#!/usr/bin/env bash
# The GPU benchmark set in one go, in under 10 minutes on an H100-class card:
#  1. bench/gpu_step.py on the full-size FLUX.1 Kontext transformer at 512 and 1024 px, LoRA rank 16,
#     with an int8-quanto base and with a bf16 base, each also timed the diffusers training example's
#     way (--peer): it/s, s/step, peak GPU memory, model TFLOP per step and MFU;
#  2. bench/real_width.py on the GPU: the replica (real width, 1+2 and 2+4 blocks) through the
#     project's quantize, cache_text, cache_vae and one training step at 1024 px, printing the
#     measured GPU memory extrapolated to the full model beside the CPU plan's prediction, and the
#     step time extrapolated per block to the full model (it/s, beside the seed's ~0.4 it/s, RTX 4090).
# JSON goes under $GPU_ALL_OUT.
#
#   bench/gpu_all.sh                                   # on a GPU
#   bench/gpu_all.sh --device cpu --tiny --steps 1     # CPU smoke run of the same paths (CI)
#
# Extra arguments go to every gpu_step.py call; with --tiny, real_width.py runs --quick on the CPU.
# Each call is bounded (GPU_ALL_TIMEOUT seconds, default 180 per gpu_step call; GPU_ALL_REPLICA_TIMEOUT,
# default 220 for real_width) so the whole set stays under 10 minutes even on a slow card.
#
# A machine without the project's .venv (a bare GPU box) runs the system python; packages it lacks
# (diffusers, optimum-quanto, pydantic, ...) can be brought as wheels in .whl/ (see docs/benchmarks.md),
# installed here into a private target folder put on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3 || command -v python)"
if [ -d .whl ] && ! "$PY" -c "import diffusers, optimum.quanto, pydantic" 2>/dev/null; then
  SITE="${GPU_ALL_SITE:-/tmp/gpu-all-site}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${GPU_ALL_OUT:-artifacts/bench}"
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "no nvidia-smi"
# The CPU plan's GPU memory for a 1024 px int8 LoRA r16 step (docs/benchmarks.md, `python bench/real_width.py`).
PREDICTED_GPU_GB="${PREDICTED_GPU_GB:-22.5}"
status=0
for precision in int8-quanto no_change; do
  echo "== base ${precision} (no_change = bf16), LoRA rank 16"
  timeout "${GPU_ALL_TIMEOUT:-180}" "$PY" bench/gpu_step.py --precision "$precision" --rank 16 --peer \
    --json "$OUT/gpu_step_${precision}.json" "$@" || status=$?
done
replica_args=(--device cuda --train-px 1024 --vae-px 1024 --predicted-gpu-gb "$PREDICTED_GPU_GB")
case " $* " in *" --tiny "*) replica_args=(--quick --device cpu) ;; esac
echo "== replica at real width: quantize, cache_text, cache_vae, one training step (${replica_args[*]})"
timeout "${GPU_ALL_REPLICA_TIMEOUT:-220}" "$PY" bench/real_width.py "${replica_args[@]}" \
  --json "$OUT/real_width.json" || status=$?
exit "$status"
