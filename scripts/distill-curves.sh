#!/usr/bin/env bash
# The distillation figures of the README and lesson 20, on the shipped micro model:
#   1. a teacher: micro fully fine-tuned on story-qa (150 steps of 16);
#   2. students of the teacher's shape with 2 of its 4 layers, trained from scratch on only
#      64 story-qa examples (150 steps), with the teacher's soft targets (α 0.9) at
#      temperatures 1, 2 and 4, with each divergence, and on sampled completions (half the
#      steps on the student's own, GKD's on-policy lmbda 0.5; or the teacher's, seq_kd),
#      against the same student on the hard labels alone (α 0): what soft targets carry
#      that one-hot labels do not;
#   3. the same student initialised from the teacher's layers 0 and 2 (DistilBERT's
#      recipe), on the full 4000 examples for 60 steps, with and without the teacher.
# Each line is the student's held-out next-token loss on story-qa (200 examples) at the
# end, beside the teacher's. Deterministic up to floating point. About 15 minutes on 2
# cores with a release build.
#
#   bash scripts/distill-curves.sh [OUT_DIR]     (default runs/distill-curves)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/distill-curves}"
bin="${TINYTUNE_BIN:-target/release/tinytune}"
[ -x "$bin" ] || cargo build -q --release -p tinytune-cli
rm -rf "$out"
mkdir -p "$out"
last_eval() {
  python3 - "$1" <<'PY'
import json, sys
evals = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl") if json.loads(l)["event"] == "eval"]
print(f"{evals[-1]['eval_loss']:.4f}")
PY
}
"$bin" finetune --model assets/micro --data story-qa --steps 150 --batch 16 --eval-every 50 --checkpoint-every 0 --out "$out/teacher" >/dev/null 2>&1
echo "teacher: micro (4 layers, 0.88 M parameters) fine-tuned on story-qa, held-out loss $(last_eval "$out/teacher")"
echo
echo "students with 2 of its layers (0.48 M), from scratch, 64 training examples, 150 steps:"
run() {
  local name="$1"; shift
  "$bin" distill --teacher "$out/teacher" --student-layers 2 --data story-qa --batch 16 --eval-every 50 --checkpoint-every 0 --out "$out/$name" "$@" >/dev/null 2>&1
  printf '  %-44s held-out loss %s\n' "$name ($*)" "$(last_eval "$out/$name")"
}
small=(--train-examples 64 --steps 150)
run hard-labels "${small[@]}" --alpha 0
run forward-kl-T1 "${small[@]}" --alpha 0.9 --temperature 1
run forward-kl-T2 "${small[@]}" --alpha 0.9 --temperature 2
run forward-kl-T4 "${small[@]}" --alpha 0.9 --temperature 4
run reverse-kl-T2 "${small[@]}" --alpha 0.9 --temperature 2 --divergence reverse-kl
run jsd-T2 "${small[@]}" --alpha 0.9 --temperature 2 --divergence jsd
run on-policy-T1 "${small[@]}" --alpha 0.9 --temperature 1 --lmbda 0.5
run seq-kd-T1 "${small[@]}" --alpha 0.9 --temperature 1 --seq-kd
echo
echo "initialised from the teacher's layers 0 and 2, 4000 examples, 60 steps:"
run init-hard-labels --init-from-teacher --steps 60 --alpha 0
run init-forward-kl-T2 --init-from-teacher --steps 60 --alpha 0.5 --temperature 2
