#!/usr/bin/env python3
"""`tinytune serve` under load, from a second process on loopback.

Starts the server on a model and two LoRA adapters, records each (model, prompt)'s greedy
answer one request at a time, then runs CLIENTS concurrent clients for SECONDS: most send
completions for a random adapter and prompt and check the answer against the recorded one;
the rest send malformed JSON, bodies over the 1 MiB limit, bad fields, unknown models and
paths, and slow bodies trickled over a few seconds. Samples the server's resident memory
throughout. Prints one table, and exits 1 on any crash, wrong answer, bad request that is
not a 4xx with a JSON error, or memory that keeps growing.

    python3 scripts/load-serve.py [--bin target/release/tinytune] [--model assets/micro]
        [--clients 64] [--seconds 60]

Standard library only; adapters are fine-tuned first (a few LoRA steps each).
"""

import argparse
import http.client
import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

PROMPTS = ["review: a fine day.\nsentiment:", "the robot", "name: Ada, age: 7 ->", "once upon a time"]


def start(binary, model, adapters):
    """The server, started as scripts/bench-serve.py starts it (mixed batching): (process, host, port)."""
    spec = importlib.util.spec_from_file_location("bench_serve", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-serve.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    proc, addr = bench.start(binary, model, adapters, "mixed", 32)
    host, port = addr.split(":")
    return proc, host, int(port)


def request(host, port, method, path, body=None, timeout=120):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body is not None else {})
        r = c.getresponse()
        return r.status, r.getheader("Content-Type") or "", r.read()
    finally:
        c.close()


def completion(host, port, model, prompt):
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0})
    status, _, data = request(host, port, "POST", "/v1/completions", body)
    if status != 200:
        return status, None
    return status, json.loads(data)["choices"][0]["text"]


def slow(host, port, model):
    """Sends the headers, then the body a few bytes at a time over about three seconds."""
    body = json.dumps({"model": model, "prompt": "the robot", "max_tokens": 4, "temperature": 0}).encode()
    s = socket.create_connection((host, port), timeout=60)
    try:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        step = max(1, len(body) // 10)
        for i in range(0, len(body), step):
            s.sendall(body[i:i + step])
            time.sleep(0.3)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return int(data.split(b" ", 2)[1])
    finally:
        s.close()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/tinytune")
    p.add_argument("--model", default="assets/micro")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=60)
    a = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="load-serve-")
    adapters = []
    for task in ["sentiment", "json-extract"]:
        out = os.path.join(tmp, task)
        subprocess.run([a.bin, "finetune", "--model", a.model, "--data", task, "--method", "lora", "--steps", "5", "--out", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        adapters.append(f"{task}={out}")
    proc, host, port = start(a.bin, a.model, adapters)
    try:
        models = [m["id"] for m in json.loads(request(host, port, "GET", "/v1/models")[2])["data"]]
        # Each (model, prompt)'s greedy answer, one request at a time.
        expected = {}
        for m in models:
            for pr in PROMPTS:
                status, text = completion(host, port, m, pr)
                if status != 200:
                    sys.exit(f"the reference request for {m} failed with {status}")
                expected[(m, pr)] = text
        lock = threading.Lock()
        stats = {}
        problems = []
        latencies = []

        def count(kind, ok, detail=""):
            with lock:
                n, bad = stats.get(kind, (0, 0))
                stats[kind] = (n + 1, bad + (0 if ok else 1))
                if not ok and len(problems) < 20:
                    problems.append(f"{kind}: {detail}")

        def bad_request(kind, body, path="/v1/completions", method="POST", want=(400, 404, 413)):
            status, ctype, data = request(host, port, method, path, body)
            ok = status in want
            try:
                ok = ok and "message" in json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                ok = False
            count(kind, ok, f"{status} {ctype} {data[:120]!r}")

        deadline = time.time() + a.seconds

        def client(seed):
            rng = random.Random(seed)
            while time.time() < deadline:
                r = rng.random()
                try:
                    if r < 0.80:
                        m, pr = rng.choice(models), rng.choice(PROMPTS)
                        t0 = time.time()
                        status, text = completion(host, port, m, pr)
                        with lock:
                            latencies.append(time.time() - t0)
                        count("completion", status == 200 and text == expected[(m, pr)], f"{m} {pr!r}: {status} {text!r} != {expected[(m, pr)]!r}")
                    elif r < 0.84:
                        bad_request("malformed JSON", '{"model": "x", "prompt": ')
                    elif r < 0.87:
                        try:
                            bad_request("body over 1 MiB", json.dumps({"model": models[0], "prompt": "a" * (2 << 20)}))
                        except (BrokenPipeError, ConnectionResetError):
                            # The server answered 413 and closed before the client finished
                            # sending: HTTP allows it, and the other clients are unaffected.
                            count("over 1 MiB, cut", True)
                    elif r < 0.90:
                        bad_request("bad field", json.dumps({"model": models[0], "prompt": "a", "max_tokens": -3}))
                    elif r < 0.93:
                        bad_request("unknown model", json.dumps({"model": "nope", "prompt": "a"}))
                    elif r < 0.95:
                        bad_request("unknown path", None, path="/v1/nothing", method="GET")
                    else:
                        status = slow(host, port, rng.choice(models))
                        count("slow body", status == 200, f"status {status}")
                except Exception as e:  # a dropped connection or a timeout is a failure
                    count("connection", False, repr(e))
                if proc.poll() is not None:
                    count("server alive", False, f"exited with {proc.returncode}")
                    return

        memory = []

        def sample():
            while time.time() < deadline and proc.poll() is None:
                memory.append(rss_kib(proc.pid))
                time.sleep(1)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)] + [threading.Thread(target=sample)]
        start_rss = rss_kib(proc.pid)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        alive = proc.poll() is None
        print(f"{a.clients} clients for {a.seconds:.0f} s on {a.model} with {len(models) - 1} adapters ({a.bin})")
        print(f"{'requests':<18} {'sent':>8} {'failed':>7}")
        for kind, (n, bad) in sorted(stats.items()):
            print(f"{kind:<18} {n:>8} {bad:>7}")
        latencies.sort()
        if latencies:
            q = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))]
            print(f"completions: {len(latencies) / a.seconds:.1f}/s, latency p50 {q(0.5) * 1000:.0f} ms, p99 {q(0.99) * 1000:.0f} ms")
        # Memory is flat when the last third's peak is within 10% of the first third's.
        third = max(1, len(memory) // 3)
        first, last = max(memory[:third] or [start_rss]), max(memory[-third:] or [start_rss])
        flat = last <= first * 1.10
        print(f"server memory (RSS): {start_rss / 1024:.0f} MiB before the load, peak {max(memory or [0]) / 1024:.0f} MiB, "
              f"first third {first / 1024:.0f} MiB, last third {last / 1024:.0f} MiB ({'flat' if flat else 'GROWING'})")
        print(f"server {'alive' if alive else 'DEAD'} after the load")
        for pr in problems:
            print(f"  {pr}")
        failed = sum(bad for _, bad in stats.values())
        sys.exit(0 if alive and flat and failed == 0 else 1)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
