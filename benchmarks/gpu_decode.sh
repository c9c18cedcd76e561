#!/usr/bin/env bash
# Where a decode step's time goes on one GPU (issue 19: rollouts against transformers' generate):
# Gemma 3 1B, bfloat16, 64 x (256 + 128), ours only, under variants of the all-ended check
# cadence (SamplingConfig.eos_check_every) and of XLA's command buffers (CUDA graphs), each in its
# own process (100-150 s each at 1B: most of it initializing and compiling; the command-buffer
# variants were not measured yet). Run from the repository root: bash benchmarks/gpu_decode.sh OUT_DIR
set -u -o pipefail
OUT=${1:?usage: bash benchmarks/gpu_decode.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
SHAPE="--preset ${PRESET:-gemma3_1b} --dtype bfloat16 --batch 64 --prompt 256 --new 128 --iters 3 --no_recompute"
START=$SECONDS
variant() {  # variant NAME EOS_CHECK_EVERY XLA_FLAGS
  echo "== $1 (every $2, XLA_FLAGS='$3', $((SECONDS - START))s used)"
  XLA_FLAGS="$3" timeout -k 5 ${LIMIT_S:-200} ${PYTHON:-python3} -m benchmarks.bench_sampling $SHAPE --eos_check_every "$2" \
    --out "$OUT/$1" 2>&1 | grep -v "^W0000\|^I0000" | tail -8
}
ALL=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN
variant every1 1 ""
variant every8 8 ""
variant every1_no_graphs 1 "--xla_gpu_enable_command_buffer="
variant every8_while_graphs 8 "--xla_gpu_enable_command_buffer=$ALL,WHILE,CONDITIONAL"
variant every16 16 ""
echo "== done in $((SECONDS - START))s"
