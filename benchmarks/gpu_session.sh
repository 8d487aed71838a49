#!/usr/bin/env bash
# Every GPU measurement that issues 7 and 8 still need, in two commands that each fit a
# 10-minute limit on a lent H100 (docs/BENCHMARKS.md, "One GPU session").
#
#   bash benchmarks/gpu_session.sh a    # device probe, bf16 equivalence, extract fixed mix (all runs)
#   bash benchmarks/gpu_session.sh b    # extract ARC mix (arclens, pinned, eager), generation, store writes
#   bash benchmarks/gpu_session.sh c    # extract ARC mix, torch.compile baseline (inductor: slow)
#
# Issue the next stage within 30 s of the last one's end, or the machine is given back and the
# next call starts a bare one (a few minutes of device time). DRY=1 runs every step on the CPU
# with tiny shapes, to check the commands here before spending device time on them.
#
# Run from the repository root on the GPU machine, with .bench/arc1_eval.json carried (make it here
# with: PYTHONPATH=src .venv/bin/python benchmarks/extract_throughput.py --dump-tasks .bench/arc1_eval.json).
# Results land in $OUT (default ./gpu-results): one JSON per step plus session.log. Each step has
# its own time limit, so one slow step leaves the others' results intact.
set -uo pipefail
stage=${1:?usage: gpu_session.sh a|b}
OUT=${OUT:-$PWD/gpu-results}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The compile cache would make the second stage's compiles look free; measure cold compiles.
export ARCLENS_COMPILE_CACHE=off
TASKS=.bench/arc1_eval.json
MODEL=/tmp/arclens-q05
log() { echo "== $(date -u +%T) $*" | tee -a "$OUT/session.log"; }
step() {  # step SECONDS NAME COMMAND...: run with a time limit, log its output and exit status
  local limit=$1 name=$2; shift 2
  log "$name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  log "$name exit ${PIPESTATUS[0]}"
}

if [ "${DRY:-0}" = 1 ]; then  # tiny shapes on the CPU: checks the commands, measures nothing
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=
  DEV=cpu; PRESET=tiny; PROBE_SHAPES="2x128"; EQ="--cpu --tiny"
  FIXED="--batch 2 --seq 128 --steps 2"; ARC="--mix-samples 4 --tokens-per-batch 1024 --predictions-per-task 2"
  GEN="--batch-size 4 --max-new-tokens 8 --dtype float32"; STORE_GB=0.05
else
  DEV=gpu; PRESET=0.5b; PROBE_SHAPES="16x2048 32x1024"; EQ=""; FIXED=""; ARC=""
  GEN="--batch-size 64 --max-new-tokens 256"; STORE_GB=3
fi
[ -f "$TASKS" ] || { echo "missing $TASKS (see the header of this script)"; exit 2; }
log "stage $stage on $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
python3 -c 'import jax, torch, transformers; print("jax", jax.__version__, jax.devices(), "torch", torch.__version__, "transformers", transformers.__version__)' \
  2>&1 | tee -a "$OUT/session.log"
[ -d "$MODEL-$PRESET" ] || step 120 random-model python3 -m arclens.cli random-model "$MODEL-$PRESET" --preset $PRESET
MODEL=$MODEL-$PRESET
B="python3 benchmarks/extract_throughput.py --device $DEV --model $MODEL --tasks-json $TASKS"
case "$stage" in
  a)
    step 120 device_probe env OUT="$OUT" python3 benchmarks/device_probe.py --preset $PRESET --shapes $PROBE_SHAPES
    step 100 equivalence python3 benchmarks/model_equivalence_gpu.py $EQ --out "$OUT"
    step 250 extract_fixed $B $FIXED --mixes fixed --runs arclens pinned disk eager compile --json "$OUT/extract_fixed.json"
    ;;
  b)
    step 240 extract_arc $B $ARC --mixes arc --runs arclens pinned eager --json "$OUT/extract_arc.json"
    step 150 generate python3 benchmarks/generate_throughput.py --device $DEV --model "$MODEL" \
      --tasks-json "$TASKS" $GEN --loop while --out "$OUT/generate.json"
    step 90 store_write python3 benchmarks/store_write_throughput.py --gb $STORE_GB --threads 0 2 4 8
    ;;
  c)
    step 540 extract_arc_compile $B $ARC --mixes arc --runs compile --json "$OUT/extract_arc_compile.json"
    ;;
  *) echo "stage must be a, b or c"; exit 2 ;;
esac
log "stage $stage done"
