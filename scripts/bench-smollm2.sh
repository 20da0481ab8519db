#!/usr/bin/env bash
# SmolLM2-135M-Instruct on the CPU, tinytune beside transformers + PEFT in one run on the
# same machine and the same (dequantized, FP32) weights: greedy generation tokens/s with a
# key/value cache, and LoRA (rank 16, all linear layers) training tokens/s at batch 4 × 256.
#   scripts/bench-smollm2.sh [GGUF]      (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)
# Needs a release build of tinytune on PATH or in target/release, and python with torch,
# transformers and peft (PYTHON=...). Absolute figures move ±50% on shared machines; read
# the ratio.
set -euo pipefail
gguf="${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
python="${PYTHON:-python3}"
bin="$(command -v tinytune || echo target/release/tinytune)"
threads="${THREADS:-$(nproc)}"
prompt="Name three primary colours."
max_new=64 batch=4 seq=256 steps=4 rank=16
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$bin" import gguf "$gguf" --out "$work/smollm2" 2>/dev/null
echo "== tinytune ($bin)"
"$bin" generate --model "$work/smollm2" --chat --prompt "$prompt" --temperature 0 --max-tokens "$max_new" --stats 2>&1 >/dev/null | sed 's/^/generate: /'
"$bin" finetune --model "$work/smollm2" --data stories --method lora --rank "$rank" --alpha $((2 * rank)) --targets all-linear \
  --batch "$batch" --seq-len "$seq" --steps "$steps" --eval-every "$steps" --eval-batches 1 --out "$work/run" >/dev/null 2>&1
"$python" - "$work/run/metrics.jsonl" "$batch" "$seq" <<'PY'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if '"event":"step"' in l]
steady = steps[1:] or steps
secs = sum(s["tokens"] / s["tokens_per_s"] for s in steady)
print(f"train_tokens_per_s {sum(s['tokens'] for s in steady) / secs:.1f}  (steps 2..{len(steps)}, {secs / len(steady):.2f} s/step)")
PY
echo "== transformers + PEFT ($("$python" -c 'import torch, transformers, peft; print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")'), $threads threads)"
"$python" "$(dirname "$0")/bench_smollm2_peer.py" "$work/smollm2" "$prompt" "$max_new" "$batch" "$seq" "$steps" "$rank" "$threads" 2>/dev/null
