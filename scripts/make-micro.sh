#!/usr/bin/env bash
# Re-creates a pretrained checkpoint shipped in assets/: by default assets/micro, a
# 1 M-parameter GPT-2-shaped model; with PRESET=micro-llama, assets/micro-llama, the same
# size class in the Llama layout (RoPE, RMSNorm, SwiGLU, grouped-query attention). Both
# have a 512-token byte-level BPE tokenizer and are pretrained the same way on the
# generated story corpus. Each takes about 10 minutes on 2 CPU cores with flex.
#
#   bash scripts/make-micro.sh [RUN_DIR] [extra pretrain flags]
#   PRESET=micro-llama bash scripts/make-micro.sh
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${PRESET:-micro}
run=${1:-runs/$preset-pretrain}
# The dev profile is enough: Burn and every other dependency are built with opt-level 3
# there (see Cargo.toml), and tinytune's own code only orchestrates tensor operations.
cargo run -p tinytune-cli -- pretrain \
  --preset "$preset" --tokenizer bpe --vocab 512 --data stories \
  --train-examples 20000 --eval-examples 400 \
  --steps 1000 --batch 8 --seq-len 128 --lr 2e-3 --warmup 50 \
  --eval-every 100 --checkpoint-every 100 --seed 0 --data-seed 0 \
  --out "$run" "${@:2}"
mkdir -p "assets/$preset"
for f in config.json model.safetensors tokenizer.json; do
  cp "$run/checkpoint/$f" "assets/$preset/"
done
cp "$run/loss.svg" "assets/$preset/pretrain-loss.svg"
echo "assets/$preset updated from $run"
