#!/usr/bin/env python3
"""Throughput of `tinytune serve` with requests for several adapters at once.

Starts the server twice on the same model and adapters, once batching requests for any
adapters together (`--batching mixed`) and once one adapter per batch (`--batching
per-adapter`, as a server without multi-adapter batching must), sends the same load to each
at 1, 8 and 32 concurrent clients (each client cycling through the adapters), and prints
requests/s and generated tokens/s side by side with their ratio.

    python3 scripts/bench-serve.py [--bin target/release/tinytune] [--model assets/micro]
        [--adapter NAME=DIR ...] [--requests 64] [--max-tokens 32] [--clients 1,8,32]
        [--max-batch 32]

Without --adapter it first fine-tunes two LoRA adapters of the model (sentiment and
json-extract, a few steps each) into a temporary folder. Standard library only.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def start(binary, model, adapters, batching, max_batch):
    args = [binary, "serve", "--model", model, "--port", "0", "--batching", batching, "--max-batch", str(max_batch)]
    for a in adapters:
        args += ["--adapter", a]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    line = proc.stderr.readline()
    if "http://" not in line:
        proc.kill()
        sys.exit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, line.split("http://")[1].split("/")[0]


def complete(addr, model, prompt, max_tokens):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    req = urllib.request.Request(f"http://{addr}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        reply = json.load(r)
    return len(reply["choices"][0]["token_ids"])


def load(addr, names, clients, requests, max_tokens):
    """`requests` completions from `clients` threads, request i for adapter i mod n."""
    prompts = ["text: the park was great.\nfeeling:", "text: mia saw a red kite at the beach.\njson:", "once upon a time"]
    todo = list(range(requests))
    lock = threading.Lock()
    tokens = [0]

    def client():
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            n = complete(addr, names[i % len(names)], prompts[i % len(prompts)], max_tokens)
            with lock:
                tokens[0] += n

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    return requests / seconds, tokens[0] / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default="target/release/tinytune")
    p.add_argument("--model", default="assets/micro")
    p.add_argument("--adapter", action="append", default=[])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=32, help="the servers' --max-batch")
    a = p.parse_args()
    adapters = a.adapter
    if not adapters:
        tmp = tempfile.mkdtemp(prefix="bench-serve-")
        for task in ["sentiment", "json-extract"]:
            out = os.path.join(tmp, task)
            subprocess.run([a.bin, "finetune", "--model", a.model, "--data", task, "--method", "lora", "--steps", "5", "--out", out],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            adapters.append(f"{task}={out}")
    names = [s.split("=")[0] for s in adapters]
    print(f"{a.model} with {len(names)} adapters ({', '.join(names)}); {a.requests} requests of {a.max_tokens} tokens per row, greedy")
    print(f"{'clients':>7} | {'mixed req/s':>11} {'tok/s':>8} | {'per-adapter req/s':>17} {'tok/s':>8} | {'mixed / per-adapter':>19}")
    servers = {b: start(a.bin, a.model, adapters, b, a.max_batch) for b in ["mixed", "per-adapter"]}
    try:
        for clients in [int(c) for c in a.clients.split(",")]:
            row = {}
            # The same load, one server after the other, then the ratio.
            for batching, (_, addr) in servers.items():
                load(addr, names, min(clients, 4), 4, 4)  # warm up
                row[batching] = load(addr, names, clients, a.requests, a.max_tokens)
            (mr, mt), (pr, pt) = row["mixed"], row["per-adapter"]
            print(f"{clients:>7} | {mr:>11.2f} {mt:>8.1f} | {pr:>17.2f} {pt:>8.1f} | {mt / pt:>18.2f}x")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
