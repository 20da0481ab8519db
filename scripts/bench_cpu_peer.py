"""The PyTorch side of scripts/bench-cpu.sh: a GPT-2-shaped model from transformers'
GPT2LMHeadModel (no dropout, tied embeddings, FP32, eager), trained with AdamW on random
tokens, fully or with PEFT LoRA. Prints one JSON line: {"tokens_per_s": ...}.

    python scripts/bench_cpu_peer.py METHOD D_MODEL LAYERS HEADS CTX BATCH VOCAB STEPS THREADS [RANK]

METHOD is full or lora (rank RANK on c_attn, both c_proj and c_fc, alpha = rank, as
tinytune bench's defaults). Three untimed warm-up steps come first, as in tinytune bench.
"""
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
cfg = GPT2Config(n_embd=d, n_layer=layers, n_head=heads, n_positions=ctx, vocab_size=vocab,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
model = GPT2LMHeadModel(cfg)
if method == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0,
                                             target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM"))
elif method != "full":
    sys.exit(f"method must be full or lora, not {method}")
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
g = torch.Generator().manual_seed(0)


def step():
    x = torch.randint(0, vocab, (batch, ctx), generator=g)
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


for _ in range(3):
    step()
t = time.perf_counter()
for _ in range(steps):
    step()
s = time.perf_counter() - t
print(json.dumps({"tokens_per_s": batch * ctx * steps / s, "steps": steps, "seconds": s,
                  "torch": torch.__version__}))
