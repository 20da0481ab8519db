#!/usr/bin/env bash
# Re-creates the pretrained micro checkpoint shipped in assets/micro: a 1 M-parameter
# GPT-2-shaped model with a 512-token byte-level BPE tokenizer, pretrained on the generated
# story corpus. Takes about 10 minutes on 2 CPU cores with the flex backend.
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-runs/micro-pretrain}
# The dev profile is enough: Burn and every other dependency are built with opt-level 3
# there (see Cargo.toml), and tinytune's own code only orchestrates tensor operations.
cargo run -p tinytune-cli -- pretrain \
  --preset micro --tokenizer bpe --vocab 512 --data stories \
  --train-examples 20000 --eval-examples 400 \
  --steps 1000 --batch 8 --seq-len 128 --lr 2e-3 --warmup 50 \
  --eval-every 100 --checkpoint-every 100 --seed 0 --data-seed 0 \
  --out "$run" "${@:2}"
mkdir -p assets/micro
for f in config.json model.safetensors tokenizer.json; do
  cp "$run/checkpoint/$f" assets/micro/
done
cp "$run/loss.svg" assets/micro/pretrain-loss.svg
echo "assets/micro updated from $run"
