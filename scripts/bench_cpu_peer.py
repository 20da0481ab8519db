"""The PyTorch side of scripts/bench-cpu.sh and scripts/gpu-check.sh: a GPT-2-shaped model
from transformers' GPT2LMHeadModel (no dropout, tied embeddings, eager), trained with AdamW
on random tokens, fully or with PEFT LoRA. Prints one JSON line:
{"tokens_per_s": ..., "peak_bytes": ... (CUDA only)}.

    python scripts/bench_cpu_peer.py METHOD D_MODEL LAYERS HEADS CTX BATCH VOCAB STEPS THREADS [RANK]

METHOD is full or lora (rank RANK on c_attn, both c_proj and c_fc, alpha = rank, as
tinytune bench's defaults). Three untimed warm-up steps come first, as in tinytune bench.
PEER_DEVICE=cuda runs on the GPU; PEER_DTYPE=bf16 or fp16 runs the forward and backward
passes under torch.autocast with FP32 weights (mixed precision, as tinytune's --precision).
"""
import os
import json
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

method = sys.argv[1]
d, layers, heads, ctx, batch, vocab, steps, threads = map(int, sys.argv[2:10])
rank = int(sys.argv[10]) if len(sys.argv) > 10 else 8
torch.set_num_threads(threads)
torch.manual_seed(0)
device = os.environ.get("PEER_DEVICE", "cpu")
dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[os.environ.get("PEER_DTYPE", "fp32")]
cfg = GPT2Config(n_embd=d, n_layer=layers, n_head=heads, n_positions=ctx, vocab_size=vocab,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
model = GPT2LMHeadModel(cfg)
if method == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                                             target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM"))
elif method != "full":
    sys.exit(f"method must be full or lora, not {method}")
model.to(device)
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
g = torch.Generator().manual_seed(0)
scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)


def step():
    x = torch.randint(0, vocab, (batch, ctx), generator=g).to(device)
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = model(input_ids=x, labels=x).loss
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


for _ in range(3):
    step()
sync()
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
for _ in range(steps):
    step()
sync()
s = time.perf_counter() - t
peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
print(json.dumps({"tokens_per_s": batch * ctx * steps / s, "steps": steps, "seconds": s,
                  "peak_bytes": peak, "torch": torch.__version__}))
