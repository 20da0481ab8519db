#!/usr/bin/env bash
# The GRPO figures of the README: the shipped micro model, first taught a task's answer
# format by a short SFT run, then trained with GRPO on the task's verifiable reward
# (sentiment: the exact label), without and with a KL term; each evaluation's held-out
# rewards (sampled as in training, and greedy) and the held-out loss on the reference
# answers. Deterministic: the same figures on every machine, up to floating point. About 2
# minutes on 2 cores with a release build.
#
#   bash scripts/grpo-curves.sh [OUT_DIR]     (default runs/grpo-curves)
#   TASK=json-extract SFT_STEPS=100 bash scripts/grpo-curves.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/grpo-curves}"
bin="${TINYTUNE_BIN:-target/release/tinytune}"
task="${TASK:-sentiment}"
[ -x "$bin" ] || cargo build -q --release -p tinytune-cli
rm -rf "$out"
mkdir -p "$out"
run() {
  local name="$1"
  shift
  "$bin" "$@" 2>"$out/$name.log" || { tail -5 "$out/$name.log"; exit 1; }
}
show() {
  python3 - "$1" <<'PY'
import json, sys
for line in open(sys.argv[1] + "/metrics.jsonl"):
    e = json.loads(line)
    if e["event"] == "eval":
        m = e["metrics"]
        print(f"  step {e['step']:>3}  held-out reward {m['reward']:.3f}  greedy {m['greedy_reward']:.3f}  answer loss {e['eval_loss']:.4f}")
    elif e["event"] == "step" and e["step"] % 10 == 0:
        m = e["metrics"]
        kl = f"  kl {m['kl']:.4f}" if "kl" in m else ""
        print(f"  step {e['step']:>3}  batch reward {m['reward']:.3f}  frac_reward_zero_std {m['frac_reward_zero_std']:.2f}{kl}")
PY
}
run sft finetune --model assets/micro --data "$task" --batch 8 --steps "${SFT_STEPS:-100}" --lr 3e-3 --seq-len 48 \
  --train-examples 2000 --eval-examples 48 --checkpoint-every 0 --out "$out/sft"
reward() {
  "$bin" eval --model "$1" --data "$task" --objective grpo --accuracy-examples 64 --max-completion-len 4 --seq-len 48 --json |
    python3 -c 'import json, sys; m = json.load(sys.stdin); print("held-out reward %.3f  greedy %.3f" % (m["reward"], m["greedy_reward"]))'
}
echo "after ${SFT_STEPS:-100} SFT steps on $task: $(reward "$out/sft")"
# 8 prompts x 8 completions a step; the task's answers are a line of a few tokens.
common=(--data "$task" --objective grpo --group-size 8 --batch 64 --seq-len 48 --max-completion-len 4 --steps "${STEPS:-60}"
  --train-examples 2000 --eval-examples 64 --eval-every 10 --checkpoint-every 0 --lr "${LR:-3e-4}")
run grpo finetune --model "$out/sft" "${common[@]}" --out "$out/grpo"
echo "GRPO (full fine-tuning, lr ${LR:-3e-4}, beta 0: no reference):"
show "$out/grpo"
run grpo-kl finetune --model "$out/sft" "${common[@]}" --beta 0.04 --out "$out/grpo-kl"
echo "GRPO with a KL term to the SFT model (beta 0.04):"
show "$out/grpo-kl"
