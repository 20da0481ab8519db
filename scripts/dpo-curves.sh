#!/usr/bin/env bash
# The preference-tuning figures of the README: DPO, IPO, hinge, ORPO, KTO and a reward model on the shipped micro model
# (LoRA r 8 on every linear layer, 40 steps of 8 pairs, lr 5e-3), on story-qa's sentence
# pairs (a style preference) and, after 100 steps of SFT, on its correctness pairs; each
# run's held-out TRL metrics every 10 steps, and the held-out story loss before and after
# (the alignment tax). Deterministic: the same figures on every machine, up to floating
# point. About 5 minutes on 2 cores with a release build.
#
#   bash scripts/dpo-curves.sh [OUT_DIR]     (default runs/dpo-curves)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/dpo-curves}"
bin="${TINYTUNE_BIN:-target/release/tinytune}"
[ -x "$bin" ] || cargo build -q --release -p tinytune-cli
rm -rf "$out"
mkdir -p "$out"
common=(--method lora --rank 8 --alpha 16 --targets all-linear --batch 8 --steps 40 --lr 5e-3
  --train-examples 1000 --eval-examples 48 --eval-batches 6 --eval-every 10 --checkpoint-every 0)
show() {
  python3 - "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1] + "/metrics.jsonl"):
    e = json.loads(line)
    if e["event"] == "eval":
        m = e["metrics"]
        # KTO has no pairs, so no accuracies; it reports its KL estimate instead.
        first = f"accuracies {m['rewards/accuracies']:.3f}" if "rewards/accuracies" in m else f"kl {m['kl']:.3f}"
        print(f"  step {e['step']:>3}  loss {e['eval_loss']:.4f}  {first}  "
              f"margins {m['rewards/margins']:+.3f}  chosen {m['rewards/chosen']:+.3f}  rejected {m['rewards/rejected']:+.3f}  "
              f"logps/chosen {m['logps/chosen']:.2f}  logps/rejected {m['logps/rejected']:.2f}")
EOF
}
show_reward() {
  python3 - "$1" <<'EOF'
import json, sys
for line in open(sys.argv[1] + "/metrics.jsonl"):
    e = json.loads(line)
    if e["event"] == "eval":
        m = e["metrics"]
        print(f"  step {e['step']:>3}  loss {e['eval_loss']:.4f}  accuracy {m['accuracy']:.3f}  margin {m['margin']:+.3f}  "
              f"rewards min {m['min_reward']:+.3f} mean {m['mean_reward']:+.3f} max {m['max_reward']:+.3f}")
EOF
}
# A command's progress goes to OUT/NAME.log, shown if it fails.
run() {
  local name="$1"
  shift
  "$bin" "$@" 2>"$out/$name.log" || { tail -5 "$out/$name.log"; exit 1; }
}
story_loss() { "$bin" eval --model "$1" --data stories --examples 100 --json | python3 -c 'import json, sys; print("%.4f" % json.load(sys.stdin)["eval_loss"])'; }
echo "held-out story loss of assets/micro: $(story_loss assets/micro)"
# KTO takes each pair apart: the sentence a desirable example, the bare answer an undesirable one.
for objective in dpo ipo hinge orpo kto; do
  run "$objective" finetune --model assets/micro --data story-qa-sentence-pairs --objective "$objective" "${common[@]}" --out "$out/$objective"
  echo "$objective on story-qa-sentence-pairs (beta 0.1):"
  show "$out/$objective"
  echo "  held-out story loss after: $(story_loss "$out/$objective")"
done
run sft finetune --model assets/micro --data story-qa --batch 8 --steps 100 --lr 3e-3 --train-examples 2000 --eval-examples 48 --checkpoint-every 0 --out "$out/sft"
run sft-dpo finetune --model "$out/sft" --data story-qa-pairs --objective dpo "${common[@]}" --out "$out/sft-dpo"
echo "dpo on story-qa-pairs after 100 steps of SFT (the SFT model is the reference):"
show "$out/sft-dpo"
# A reward model (micro with a score head, TRL's RewardTrainer): on the style pairs from
# micro itself, and on the correctness pairs from the SFT model.
run reward finetune --model assets/micro --data story-qa-sentence-pairs --objective reward "${common[@]}" --out "$out/reward"
echo "reward model on story-qa-sentence-pairs:"
show_reward "$out/reward"
run sft-reward finetune --model "$out/sft" --data story-qa-pairs --objective reward "${common[@]}" --out "$out/sft-reward"
echo "reward model on story-qa-pairs, from the model after 100 steps of SFT:"
show_reward "$out/sft-reward"
