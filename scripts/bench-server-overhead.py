#!/usr/bin/env python3
"""Latency the HTTP server adds over the engine alone, for one short chat request.

Starts `minerva serve` (threads as given), sends the same short greedy chat request
REPS times (after one warm-up that loads the model), and compares the median wall time
with the median in-engine time of `minerva generate --json` (prompt + generation) for the
same prompt, model, threads and token count.

    python3 scripts/bench-server-overhead.py [--reps 9] [--threads 2] [--max-tokens 8]
"""
import argparse, json, os, statistics, subprocess, sys, time, urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("--bin", default="target/release/minerva")
ap.add_argument("--model", default="smollm2-135m-instruct")
ap.add_argument("--prompt", default="What is the capital of France?")
ap.add_argument("--reps", type=int, default=9)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--max-tokens", type=int, default=8)
args = ap.parse_args()

server = subprocess.Popen([args.bin, "serve", "--addr", "127.0.0.1:0", "--threads", str(args.threads)],
                          stderr=subprocess.PIPE, text=True)
line = server.stderr.readline()
url = line.split("http://")[1].split()[0]
body = json.dumps({"model": args.model, "messages": [{"role": "user", "content": args.prompt}],
                   "max_tokens": args.max_tokens, "temperature": 0}).encode()

def chat():
    req = urllib.request.Request(f"http://{url}/v1/chat/completions", body, {"content-type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req) as r:
        answer = json.load(r)
    return (time.perf_counter() - start) * 1e3, answer

try:
    chat()  # loads the model
    server_ms, answers = zip(*(chat() for _ in range(args.reps)))
finally:
    server.terminate()
    server.wait()

engine_ms = []
for _ in range(args.reps):
    out = subprocess.run([args.bin, "generate", "-m", args.model, "--chat", "-p", args.prompt, "-n", str(args.max_tokens),
                          "--temperature", "0", "-t", str(args.threads), "--json"], capture_output=True, text=True, check=True)
    t = json.loads(out.stdout)["timings"]
    engine_ms.append(t["prompt_ms"] + t["generation_ms"])

s, e = statistics.median(server_ms), statistics.median(engine_ms)
print(f"tokens generated per request: {answers[0]['usage']['completion_tokens']}")
print(f"server request (HTTP, parse, template, tokenize, queue, generate): median {s:.1f} ms over {args.reps}")
print(f"engine alone (prefill + decode inside `minerva generate`):          median {e:.1f} ms over {args.reps}")
print(f"server overhead: {s - e:.1f} ms ({(s / e - 1) * 100:.1f} %)")
