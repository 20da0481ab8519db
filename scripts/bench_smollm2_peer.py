"""The PyTorch side of scripts/bench-smollm2.sh: transformers greedy generation and a PEFT
LoRA training step on a Hugging Face folder (an imported SmolLM2), in FP32 on the CPU,
printed as `generate_tokens_per_s X` and `train_tokens_per_s Y`.

    python scripts/bench_smollm2_peer.py FOLDER PROMPT MAX_NEW_TOKENS BATCH SEQ STEPS RANK THREADS
"""
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, prompt, max_new, batch, seq, steps, rank, threads = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
model.eval()
text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
ids = tok(text, return_tensors="pt").input_ids
with torch.no_grad():
    t = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False, use_cache=True)
    s = time.perf_counter() - t
new = out.shape[1] - ids.shape[1]
print(f"generate_tokens_per_s {new / s:.2f}  ({new} tokens in {s:.2f} s)")

model.train()
lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-4)
g = torch.Generator().manual_seed(0)
times = []
for step in range(steps):
    x = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    t = time.perf_counter()
    loss = lora(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t)
steady = times[1:] or times
print(f"train_tokens_per_s {batch * seq * len(steady) / sum(steady):.1f}  (steps 2..{steps}, {sum(steady) / len(steady):.2f} s/step)")
