#!/usr/bin/env python3
"""What routing costs (Python standard library only): p50 latency of one small request
sent straight to a model, through an alias, and through a remote hop (a second Minerva
as a backend of the first), all on loopback. Starts both servers itself (a temporary
config file; the models of $MINERVA_HOME), prints a table of medians over REPS rounds
with the ratio to the direct request.

  scripts/bench-routing.py [--bin target/release/minerva] [--requests 200] [--reps 3]

The request is a one-token completion of a two-token prompt, so that the figure is
mostly the serving path (HTTP, routing, a forward pass of one token), not generation.
Each round sends the three kinds interleaved, so a drifting machine favours none.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

MODEL = "smollm2-135m-instruct"


def start(binary, args, log):
    proc = subprocess.Popen(
        [binary, "serve", "--addr", "127.0.0.1:0", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("MINERVA_") or k == "MINERVA_HOME"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log.flush()
        m = re.search(r"minerva listening on http://(\S+)", open(log.name).read())
        if m:
            host, port = m.group(1).rsplit(":", 1)
            for _ in range(300):
                try:
                    c = http.client.HTTPConnection(host, int(port), timeout=2)
                    c.request("GET", "/health")
                    if c.getresponse().status == 200:
                        return proc, host, int(port)
                except OSError:
                    time.sleep(0.05)
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"the server did not start: {open(log.name).read()[-2000:]}")


def latency(conn, model):
    body = json.dumps({"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0})
    started = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"{model}: {response.status} {data[:300]!r}")
    return time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default="target/release/minerva")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    far_log = open(os.path.join(tmp, "far.log"), "w")
    far, far_host, far_port = start(args.bin, ["--preload", "off"], far_log)
    config = os.path.join(tmp, "minerva.toml")
    with open(config, "w") as f:
        f.write(f'[aliases]\nchat = "{MODEL}"\n\n[backends.hop]\nurls = ["http://{far_host}:{far_port}/v1"]\nmodel = "{MODEL}"\n')
    front_log = open(os.path.join(tmp, "front.log"), "w")
    front, host, port = start(args.bin, ["--config", config, "--preload", "off"], front_log)
    kinds = [("direct", MODEL), ("alias", "chat"), ("remote hop", "hop")]
    try:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        for _, model in kinds:  # warm-up: loads, first passes
            for _ in range(5):
                latency(conn, model)
        p50 = {k: [] for k, _ in kinds}
        for _ in range(args.reps):
            samples = {k: [] for k, _ in kinds}
            for _ in range(args.requests):
                for kind, model in kinds:
                    samples[kind].append(latency(conn, model))
            for kind in samples:
                p50[kind].append(statistics.median(samples[kind]))
    finally:
        for proc in (front, far):
            proc.terminate()
            proc.wait()
    flags = sorted({f for f in open("/proc/cpuinfo").read().split() if f.startswith(("avx", "amx"))})
    print(f"routing overhead, {MODEL}, one-token completions, {args.requests} requests x {args.reps} rounds")
    print(f"CPU flags: {' '.join(flags)}")
    print("| path | p50 ms (median of rounds) | ratio to direct |")
    print("|---|---|---|")
    direct = statistics.median(p50["direct"])
    for kind, _ in kinds:
        m = statistics.median(p50[kind])
        print(f"| {kind} | {m * 1e3:.2f} | {m / direct:.3f} |")


if __name__ == "__main__":
    main()
