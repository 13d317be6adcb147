#!/usr/bin/env bash
# A GPU check of the whole path, <= 5 minutes on one GPU: a Pythia-70M-shaped run in bf16 with torch.compile
# (builtin corpus), a GPTQ sweep of its checkpoints on cuda, a layer-streamed GPTQ eval of its last checkpoint;
# prints training tokens/s and MFU, GPTQ seconds per block and peak CUDA memory of each step.
#
#   bench/gpu_check.sh [--dry-run] [--out DIR] [--steps N] [--json FILE]
#     --dry-run   write and check the configs (on CPU too), print the steps, run nothing
#     --out DIR   work folder (default: a new temporary folder); re-running in the same folder resumes
#     --steps N   training steps (default 300)
#     --json FILE also write the figures as JSON (e.g. bench/results/gpu_check_$(date +%F).json)
#     --cpu       the same steps at toy size on CPU (micro preset, fp32, no compile): checks the script itself
# Environment: PYTHON (default: python) must import qrobust.
set -euo pipefail

PY=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DRY=0 OUT="" STEPS=300 JSON="" CPU=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --cpu) CPU=1; shift ;;
    --out) OUT=${2:?--out needs a folder}; shift 2 ;;
    --steps) STEPS=${2:?--steps needs a number}; shift 2 ;;
    --json) JSON=${2:?--json needs a file}; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check: --steps must be a positive integer, got '$STEPS'" >&2; exit 2; }
EVERY=$(( STEPS >= 3 ? STEPS / 3 : 1 ))
STEPS=$(( EVERY * 3 ))  # three checkpoints: the first and last time the training speed
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/qrobust-gpu-check.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

DEVICE=cuda PRECISION=bf16-mixed COMPILE=true PRESET=pythia-70m BATCH=32 SEQ=512 VOCAB=8192 CHARS=4000000
if [[ $CPU -eq 1 ]]; then
  DEVICE=cpu PRECISION=fp32 COMPILE=false PRESET=micro BATCH=8 SEQ=64 VOCAB=512 CHARS=300000
fi

cat > "$OUT/train.yaml" <<YAML
name: gpu-check
out: $OUT/run
seed: 0
steps: $STEPS
batch_size: $BATCH
checkpoint_every: $EVERY
device: $DEVICE
precision: $PRECISION
compile: $COMPILE
data: {corpus: builtin, max_chars: $CHARS, seq_len: $SEQ, tokenizer: bpe, vocab_size: $VOCAB}
model: {arch: gpt_neox, preset: $PRESET}
optim: {lr: 1.0e-3, weight_decay: 0.1, grad_clip: 1.0}
schedule: {kind: wsd, warmup_steps: $(( EVERY / 2 )), decay_steps: $EVERY}
YAML

cat > "$OUT/sweep.yaml" <<YAML
trajectory: $OUT/run
out: $OUT/results
methods: [gptq]
bits: [4]
group_sizes: [$(( CPU ? 32 : 128 ))]
device: $DEVICE
eval: {split: val, n_blocks: $(( CPU ? 8 : 64 )), batch_size: 8}
calibration: {n_samples: $(( CPU ? 8 : 64 )), seed: 0}
YAML

step() {  # step NAME COMMAND...: print it; run it unless --dry-run
  local name=$1; shift
  echo "== $name: $*"
  if [[ $DRY -eq 0 ]]; then "$@"; fi
}

echo "gpu_check: work folder $OUT"
"$PY" "$HERE/gpu_check.py" check-configs "$OUT"
HAS_CUDA='import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'
if [[ $DRY -eq 0 && $CPU -eq 0 ]] && ! "$PY" -c "$HAS_CUDA"; then
  echo "gpu_check: no CUDA device here; run with --dry-run to check the configs only" >&2
  exit 2
fi
LAST="$OUT/run/checkpoints/main/step-$(printf '%07d' "$STEPS")"
step train "$PY" "$HERE/gpu_check.py" measure "$OUT/train.measure.json" -- train "$OUT/train.yaml" --quiet
step sweep "$PY" "$HERE/gpu_check.py" measure "$OUT/sweep.measure.json" -- sweep "$OUT/sweep.yaml" --quiet
EVAL=("$PY" "$HERE/gpu_check.py" measure "$OUT/eval.measure.json" -- eval "$LAST" --method gptq --bits 4
      --group-size $(( CPU ? 32 : 128 )) --stream --device "$DEVICE" --n-blocks $(( CPU ? 8 : 64 )) --json)
echo "== eval: ${EVAL[*]} > $OUT/eval.json"
if [[ $DRY -eq 0 ]]; then "${EVAL[@]}" > "$OUT/eval.json"; fi
step report "$PY" "$HERE/gpu_check.py" report "$OUT" ${JSON:+--json "$JSON"}
if [[ $DRY -eq 1 ]]; then echo "gpu_check: dry run, nothing trained"; fi
