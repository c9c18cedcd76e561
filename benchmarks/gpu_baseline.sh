#!/usr/bin/env bash
# Baseline numbers for issue 19 on one GPU, ours against transformers, in about 7 minutes:
# labeling, sampling and the train step at Gemma 3 1B and 270M shapes (bfloat16, random
# weights), then one RL iteration at 270M, then long rollouts with and without the local layers'
# ring cache if time is left. Run from the repository root:
#
#   bash benchmarks/gpu_baseline.sh OUT_DIR
#
# OUT_DIR gets log.txt (everything printed) and one JSON per benchmark (label, sampling,
# train, rl), each holding every run's rows; they are rewritten after each step, so a step
# that is cut short leaves the others. Each step runs under `timeout`, capped by what is left
# of BUDGET_S (default 380 s, counted from the start); a step that would get under 30 s is
# skipped.
# PRESETS_OVERRIDE=tiny runs every step at the tiny preset: a CPU dry run of the plumbing.
set -u -o pipefail

OUT=${1:?usage: bash benchmarks/gpu_baseline.sh OUT_DIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$SECONDS
WORK=$(mktemp -d)
BUDGET_S=${BUDGET_S:-380}
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# Ours and the peer never run at once (the peer runs in its own process first), so jax may
# take most of the memory when its turn comes.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec > >(tee -a "$OUT/log.txt") 2>&1

preset() { echo "${PRESETS_OVERRIDE:-$1}"; }

echo "== environment ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null))"
nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"
timeout 120 "$PYTHON" - <<'EOF' || echo "(environment probe failed)"
import importlib
import sys

print("python", sys.version.split()[0])
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "torch", "transformers"):
  try:
    print(name, importlib.import_module(name).__version__)
  except Exception as e:  # a missing package is worth a line, not a stop
    print(name, "unavailable:", type(e).__name__, e)
import jax

print("jax.devices()", jax.devices())
EOF

merge() {  # WORK/<bench>_<preset>_<dtype>.json -> OUT/<bench>.json {"runs": [{name, environment, rows}]}
  "$PYTHON" - "$WORK" "$OUT" <<'EOF'
import glob
import json
import os
import sys

work, out = sys.argv[1:]
groups = {}
for path in sorted(glob.glob(os.path.join(work, "*.json"))):
  name = os.path.basename(path)[: -len(".json")]
  with open(path, encoding="utf-8") as f:
    groups.setdefault(name.split("_")[0], []).append({"name": name, **json.load(f)})
for bench, runs in groups.items():
  with open(os.path.join(out, f"{bench}.json"), "w", encoding="utf-8") as f:
    json.dump({"runs": runs}, f, indent=1)
EOF
}

step() {  # step LIMIT_S MODULE ARGS...: one benchmark under a timeout (the peer gets 55% of it)
  local limit=$1 module=$2 status
  shift 2
  local peer=()
  local left=$((BUDGET_S - (SECONDS - START)))
  ((limit > left)) && limit=$left
  if ((limit < 30)); then
    echo "== skip $module $* (${left}s of the budget left)"
    return 1
  fi
  [[ " $* " == *" --peer "* ]] && peer=(--peer_timeout $((limit * 55 / 100)))
  echo "== $module $* (limit ${limit}s, $((SECONDS - START))s used)"
  timeout -k 10 "$limit" "$PYTHON" -m "$module" "$@" "${peer[@]}" --out "$WORK"
  status=$?
  echo "== $module exit $status after $((SECONDS - START))s"
  merge
  return $status
}

# The issue's goals first (1B: labeling MFU, rollouts against generate, train MFU), then 270M.
LABEL="--dtype bfloat16 --batch 32 --pairs 96 --iters 3 --peer"
SAMPLE="--dtype bfloat16 --batch 64 --prompt 256 --new 128 --iters 3 --no_recompute --peer"
TRAIN="--dtype bfloat16 --seq 1024 --iters 3 --warmup 1 --peer"
for p in gemma3_1b gemma3_270m; do
  step 100 benchmarks.bench_label --preset "$(preset $p)" $LABEL
  step 130 benchmarks.bench_sampling --preset "$(preset $p)" $SAMPLE
  step 110 benchmarks.bench_train --preset "$(preset $p)" $TRAIN --batch 8
  # Exit status 3: our step failed (out of memory, say: a CPU compile of 1B at 8 x 1024 asks 82 GiB
  # of temporaries), so both sides again at half the batch.
  (($? == 3)) && step 100 benchmarks.bench_train --preset "$(preset $p)" $TRAIN --batch 4
done
# The RL update at 64 x 384 may not fit (a CPU compile of it asks 139 GiB of temporaries); then 16 rows.
RL="--preset $(preset gemma3_270m) --dtype bfloat16 --prompt 256 --new 128 --iters 3"
step 110 benchmarks.bench_rl $RL --batch 64 || step 90 benchmarks.bench_rl $RL --batch 16
# Long rollouts, where Gemma's local layers keep a ring of 512 slots rather than every token
# (against a full cache in the same run): if the budget has time left.
step 90 benchmarks.bench_sampling --preset "$(preset gemma3_1b)" --dtype bfloat16 --batch 64 --prompt 1024 \
  --new 256 --iters 2 --no_recompute --full_local_cache
echo "== done in $((SECONDS - START))s; files in $OUT:"
ls "$OUT"
rm -rf "$WORK"
exec >&- 2>&-
sleep 1 # tee writes the last lines to log.txt
