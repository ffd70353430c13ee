#!/usr/bin/env bash
# The GPU check: every stage of the pipeline on a random-weight Qwen3-VL at 4B dimensions in
# bf16 on one GPU (no downloads: `asru_lab.models.sizes` builds the shapes), printing per stage
# the seconds, the peak GPU memory (torch.cuda.max_memory_allocated) and the peak resident
# memory, and GRPO rollouts per second through HF generate. Sized to finish in < 8 minutes on
# one H200-class GPU.
#
#   scripts/gpu_check.sh                     # qwen3-vl-4b, bf16, cuda
#   scripts/gpu_check.sh --size qwen3-vl-8b  # another size
#   scripts/gpu_check.sh --size tiny         # dry run: on the CPU when there is no GPU
#
# Needs a Python with a CUDA build of torch and this package's requirements (`pip install -e .`
# into it, or `make venv` and a CUDA torch on top); PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
SIZE=qwen3-vl-4b
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE="$2"; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$CUDA" = 1 ]; then
  DEVICE=cuda; DTYPE=bfloat16
  "$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"# GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")'
elif [ "$SIZE" = tiny ]; then
  DEVICE=cpu; DTYPE=float32
  echo "# no GPU: dry run of the GPU check on the CPU (--size tiny)"
else
  echo "gpu_check.sh: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False);" \
       "run it on a GPU machine, or try the dry run: scripts/gpu_check.sh --size tiny" >&2
  exit 2
fi

START=$(date +%s)
timeout 480 "$PYTHON" benchmarks/bench_scale.py --size "$SIZE" --device "$DEVICE" \
  --dtype "$DTYPE" "${ARGS[@]}"
echo "# gpu_check: ${SIZE} on ${DEVICE} in $(( $(date +%s) - START )) s"
