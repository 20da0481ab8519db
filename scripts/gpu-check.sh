#!/usr/bin/env bash
# One-shot check of tinytune at real scale on a GPU, printed as one table:
#
#   scripts/gpu-check.sh            (BACKEND=cuda|wgpu|flex to choose; default: cuda if the
#                                    binary has it, else wgpu, else flex)
#
# 1. GPT-2-small-shaped training (124 M parameters, batch 8 × 512 by default): full
#    fine-tuning and LoRA r8 (c_attn, both c_proj, c_fc), each in fp32 and bf16: tokens/s,
#    TFLOP/s (PaLM's model-FLOPs count, as tinytune bench prints it) and peak device memory.
# 2. QLoRA's device memory beside LoRA's: the peak, and what stays between steps (the NF4
#    base stays packed on the device; a step holds its dequantized weights for the backward
#    pass, so the saving is in the memory between steps).
# 3. A micro fine-tune (assets/micro on sentiment) on the backend and on the CPU (flex):
#    the step losses must agree within LOSS_TOL (default 1e-3: GPU reductions add in another
#    order, and the difference grows over the steps).
# 4. When PYTHON (default python3) has torch, transformers and peft: PyTorch's figures for
#    the same shapes in the same run (CUDA when torch sees a GPU, autocast for bf16).
#
# Needs a release build: cargo build --release -p tinytune-cli --features cuda (or wgpu);
# TINYTUNE=path/to/tinytune overrides. On a CPU (BACKEND=flex) it runs the micro shape
# instead of GPT-2 small (PRESET, BATCH, CTX, STEPS override either), to show the script
# works; its figures then say nothing about GPUs. Finishes in under 8 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${TINYTUNE:-target/release/tinytune}"
python="${PYTHON:-python3}"
[ -x "$bin" ] || { echo "no tinytune binary at $bin: cargo build --release -p tinytune-cli --features cuda" >&2; exit 1; }
t0=$(date +%s)
if [ -z "${BACKEND:-}" ]; then
  BACKEND=flex
  for b in cuda wgpu; do
    if "$bin" bench --backend "$b" --preset nano --batch 2 --ctx 16 --steps 1 --json >/dev/null 2>&1; then BACKEND=$b; break; fi
  done
fi
if [ "$BACKEND" = flex ]; then preset="${PRESET:-micro}" batch="${BATCH:-8}" ctx="${CTX:-128}" steps="${STEPS:-3}"
else preset="${PRESET:-gpt2}" batch="${BATCH:-8}" ctx="${CTX:-512}" steps="${STEPS:-10}"; fi
tol="${LOSS_TOL:-1e-3}"
lora=(--rank 8 --alpha 8 --targets c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj)
peer=0
peer_dev=cpu
if "$python" -c 'import torch, transformers, peft' 2>/dev/null; then
  peer=1
  "$python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null && peer_dev=cuda
fi
shape=$("$bin" info --preset "$preset" 2>/dev/null | grep -o 'total [0-9]* parameters' | grep -o '[0-9]*')
# The preset's dimensions for PyTorch's model.
read -r d layers heads vocab < <("$bin" bench --preset "$preset" --batch 1 --ctx 8 --steps 1 --json 2>/dev/null | "$python" -c 'import json,sys; v=json.load(sys.stdin); print(v["d_model"], v["layers"], v["heads"], v["vocab"])' 2>/dev/null || echo "0 0 0 0")

field() { "$python" -c 'import json,sys; v=json.loads(sys.stdin.read() or "{}"); x=v.get(sys.argv[1]); print("n/a" if x is None else x)' "$1"; }
mib() { [ "$1" = n/a ] && echo n/a || awk -v b="$1" 'BEGIN {printf "%.0f MiB", b/1048576}'; }
num() { [ "$1" = n/a ] && echo n/a || awk -v x="$1" -v f="$2" 'BEGIN {printf f, x}'; }
ratio() { { [ "$1" = n/a ] || [ "$2" = n/a ]; } && echo "" || awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f×", a/b}'; }

rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s |' "$1" "$2" "$3" "$4")"); }

for method in full lora; do
  for prec in fp32 bf16; do
    extra=(); [ "$method" = lora ] && extra=("${lora[@]}")
    out=$("$bin" bench --backend "$BACKEND" --preset "$preset" --batch "$batch" --ctx "$ctx" --steps "$steps" --method "$method" --precision "$prec" --json "${extra[@]}" 2>/dev/null || echo '{}')
    tps=$(echo "$out" | field tokens_per_s); tfl=$(echo "$out" | field tflops); pk=$(echo "$out" | field peak_bytes)
    ptps=n/a ptfl=n/a ppk=n/a
    if [ "$peer" = 1 ] && [ "$d" != 0 ]; then
      pout=$(PEER_DEVICE=$peer_dev PEER_DTYPE=$prec "$python" scripts/bench_cpu_peer.py "$method" "$d" "$layers" "$heads" "$ctx" "$batch" "$vocab" "$steps" "$(nproc)" 8 2>/dev/null || echo '{}')
      ptps=$(echo "$pout" | field tokens_per_s); ppk=$(echo "$pout" | field peak_bytes)
      # The same model-FLOPs count per token as tinytune's.
      [ "$ptps" != n/a ] && [ "$tps" != n/a ] && ptfl=$(awk -v t="$tfl" -v a="$tps" -v b="$ptps" 'BEGIN {print t / a * b}')
    fi
    row "$method $prec: tokens/s" "$(num "$tps" %.0f)" "$(num "$ptps" %.0f)" "$(ratio "$tps" "$ptps")"
    row "$method $prec: TFLOP/s" "$(num "$tfl" %.3f)" "$(num "$ptfl" %.3f)" ""
    row "$method $prec: peak memory" "$(mib "$pk")" "$(mib "$ppk")" ""
    [ "$method" = lora ] && [ "$prec" = fp32 ] && lora_rest=$(echo "$out" | field resting_bytes)
  done
done
qout=$("$bin" bench --backend "$BACKEND" --preset "$preset" --batch "$batch" --ctx "$ctx" --steps "$steps" --method qlora --json "${lora[@]}" 2>/dev/null || echo '{}')
qpk=$(echo "$qout" | field peak_bytes); qrest=$(echo "$qout" | field resting_bytes)
row "qlora fp32 (NF4 base): peak memory" "$(mib "$qpk")" "" "includes building the FP32 model it quantizes"
row "memory between steps: lora fp32 / qlora fp32" "$(mib "${lora_rest:-n/a}") / $(mib "$qrest")" "" "qlora $(ratio "$qrest" "${lora_rest:-n/a}") of LoRA's"

work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
ft=(finetune --model assets/micro --data sentiment --steps 20 --batch 8 --seq-len 64 --eval-every 20 --eval-batches 1)
"$bin" "${ft[@]}" --backend "$BACKEND" --out "$work/dev" >/dev/null 2>&1 || true
"$bin" "${ft[@]}" --backend flex --out "$work/cpu" >/dev/null 2>&1 || true
diff=$("$python" - "$work/dev/metrics.jsonl" "$work/cpu/metrics.jsonl" <<'PY' 2>/dev/null || echo n/a
import json, sys
def losses(p):
    return [json.loads(l)["loss"] for l in open(p) if '"event":"step"' in l]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert a and len(a) == len(b)
print(max(abs(x - y) for x, y in zip(a, b)))
PY
)
verdict=$(awk -v d="$diff" -v t="$tol" 'BEGIN {if (d == "n/a") print "FAIL (a run failed)"; else if (d + 0 <= t + 0) print "pass"; else print "FAIL"}')
row "micro fine-tune, 20 steps: max |Δ loss| vs CPU" "$(num "$diff" %.2e)" "" "$verdict (tolerance $tol)"

echo
echo "tinytune gpu-check: backend $BACKEND, $preset ($shape parameters), batch $batch × $ctx, $steps timed steps; $(date -u +%F)"
[ "$peer" = 1 ] && echo "PyTorch $("$python" -c 'import torch; print(torch.__version__)') on $peer_dev, eager, autocast for bf16" || echo "PyTorch: not found ($python lacks torch, transformers or peft)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | sed 's/^/GPU: /'
printf '| %s | %s | %s | %s |\n' figure "tinytune ($BACKEND)" "PyTorch ($peer_dev)" "ratio / check"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "($(( $(date +%s) - t0 )) s)"
case "$verdict" in pass) ;; *) exit 1 ;; esac
