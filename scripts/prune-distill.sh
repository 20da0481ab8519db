#!/usr/bin/env bash
# Prune, then distill the loss back (the Minitron recipe), on the shipped micro model: the
# table of lesson 20 and the README.
#   1. the teacher: micro fully fine-tuned on story-qa (300 steps of 16);
#   2. its structured prune to about 55% of the parameters (MLP 512 -> 256 neurons, 4 -> 3
#      layers; importance from 4 calibration batches of story-qa);
#   3. the pruned model trained 100 steps on story-qa three ways: on the labels alone, and
#      distilled from the teacher (α 0.5 and α 0.9, T 2); then the labels alone and α 0.9
#      again with only 64 training examples;
# Deterministic up to floating point. About 10 minutes on 2 cores with a release build.
#
#   bash scripts/prune-distill.sh [OUT_DIR]     (default runs/prune-distill)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/prune-distill}"
bin="${TINYTUNE_BIN:-target/release/tinytune}"
[ -x "$bin" ] || cargo build -q --release -p tinytune-cli
rm -rf "$out"
mkdir -p "$out"
# Every model is scored the same way: `tinytune eval` on story-qa's 200 held-out examples
# (loss on the answers) and exact-match accuracy on 50 held-out prompts.
score() {
  "$bin" eval --model "$1" --data story-qa --json 2>/dev/null | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"held-out loss {r['eval_loss']:.4f}, accuracy {r['accuracy']:.2f}\")"
}
"$bin" finetune --model assets/micro --data story-qa --steps 300 --batch 16 --eval-every 100 --checkpoint-every 0 --out "$out/teacher" >/dev/null 2>&1
echo "teacher: micro fine-tuned on story-qa, 875,264 parameters: $(score "$out/teacher")"
"$bin" prune --model "$out/teacher" --out "$out/pruned" --neurons 256 --layers 3 --data story-qa --json > "$out/prune.json" 2>/dev/null
echo "pruned to 479,616 parameters (3 layers, 256 MLP neurons): $(score "$out/pruned")"
common=(--data story-qa --steps 100 --batch 16 --eval-every 50 --checkpoint-every 0)
"$bin" finetune --model "$out/pruned" --lr 3e-4 "${common[@]}" --out "$out/labels" >/dev/null 2>&1
echo "pruned, then 100 steps on the labels: $(score "$out/labels")"
for a in 0.5 0.9; do
  "$bin" distill --teacher "$out/teacher" --student "$out/pruned" --alpha $a --temperature 2 "${common[@]}" --out "$out/distill-$a" >/dev/null 2>&1
  echo "pruned, then 100 steps distilled (alpha $a, T 2): $(score "$out/distill-$a")"
done
# The same with only 64 training examples, where the labels alone overfit.
few=(--train-examples 64 --data story-qa --steps 100 --batch 16 --eval-every 50 --checkpoint-every 0)
"$bin" finetune --model "$out/pruned" --lr 3e-4 "${few[@]}" --out "$out/labels-64" >/dev/null 2>&1
echo "pruned, then 100 steps on the labels of 64 examples: $(score "$out/labels-64")"
"$bin" distill --teacher "$out/teacher" --student "$out/pruned" --alpha 0.9 --temperature 2 "${few[@]}" --out "$out/distill-64" >/dev/null 2>&1
echo "pruned, then 100 steps distilled on 64 examples (alpha 0.9, T 2): $(score "$out/distill-64")"
