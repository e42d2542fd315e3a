#!/usr/bin/env python3
"""Soak load for scripts/soak.sh (Python standard library only).

CLIENTS threads, for DURATION seconds, each picking at random:
  chat (SmolLM2, plain or streamed; a fifth of the streams are dropped after their
  first chunk), completions (Gemma 3, plain or streamed), embeddings (one input, or a
  batch of 16), tokenize, and lifecycle calls (load, unload, a chat with keep_alive 0).
Every 10 s the server's RSS and open file descriptors are read from /proc/PID.

It prints one JSON document: requests by route and status, p50/p99 latency per route,
the RSS and descriptor samples, and the verdict. It fails (exit 1) on:
  - any status but 2xx and the designed refusals 429 and 503, or a broken connection;
  - RSS growing more than 5 % from the first minute after warm-up to the last (runs of
    three minutes or more: a shorter run has no first and last minute to compare);
  - descriptors growing: the count with no request in flight after the load, against
    the same before it (a little slack for the log and the registry's files).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import threading
import time
from collections import defaultdict

CHAT = "smollm2-135m-instruct"
BASE = "gemma-3-270m"
EMBED = "all-minilm-l6-v2"
DESIGNED = {429, 503}


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_status: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failures: list[str] = []
        self.dropped = 0

    def record(self, route: str, status, seconds: float, detail: str = ""):
        with self.lock:
            self.by_status[route][str(status)] += 1
            self.latency[route].append(seconds)
            ok = isinstance(status, int) and (200 <= status < 300 or status in DESIGNED)
            if not ok and len(self.failures) < 20:
                self.failures.append(f"{route}: {status} {detail[:300]}")


class Client:
    def __init__(self, host: str, port: int, stats: Stats, rng: random.Random):
        self.host, self.port, self.stats, self.rng = host, port, stats, rng

    def call(self, route: str, method: str, path: str, body=None, stream=False, drop=False):
        started = time.monotonic()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=300)
        try:
            payload = json.dumps(body) if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            status = response.status
            if stream and status == 200:
                if drop:
                    # The first chunk, then leave: the server must stop the generation.
                    response.readline()
                    with self.stats.lock:
                        self.stats.dropped += 1
                    conn.close()
                    self.stats.record(route + " (dropped)", status, time.monotonic() - started)
                    return
                body_text = response.read().decode("utf-8", "replace")
                if "[DONE]" not in body_text and '"done":true' not in body_text.replace(" ", ""):
                    self.stats.record(route, "incomplete-stream", time.monotonic() - started, body_text[-300:])
                    return
                detail = ""
            else:
                detail = response.read().decode("utf-8", "replace")
            self.stats.record(route, status, time.monotonic() - started, detail)
        except (OSError, http.client.HTTPException) as e:
            self.stats.record(route, type(e).__name__, time.monotonic() - started, str(e))
        finally:
            conn.close()

    def one(self):
        r = self.rng.random()
        n = self.rng.randint(1, 1000)
        if r < 0.22:
            self.call("chat", "POST", "/v1/chat/completions", {
                "model": CHAT, "max_tokens": 16,
                "messages": [{"role": "user", "content": f"Say something about the number {n}."}]})
        elif r < 0.40:
            self.call("chat stream", "POST", "/v1/chat/completions", {
                "model": CHAT, "max_tokens": 32, "stream": True,
                "messages": [{"role": "user", "content": f"Tell me a story about {n} birds."}]},
                stream=True, drop=self.rng.random() < 0.2)
        elif r < 0.50:
            self.call("completion", "POST", "/v1/completions", {
                "model": BASE, "max_tokens": 16, "prompt": f"The number {n} is"})
        elif r < 0.56:
            self.call("completion stream", "POST", "/v1/completions", {
                "model": BASE, "max_tokens": 16, "stream": True, "prompt": f"Item {n}:"},
                stream=True, drop=self.rng.random() < 0.2)
        elif r < 0.68:
            self.call("embeddings", "POST", "/v1/embeddings", {"model": EMBED, "input": f"sentence number {n}"})
        elif r < 0.78:
            self.call("embeddings batch", "POST", "/v1/embeddings", {
                "model": EMBED, "input": [f"batch {n} sentence {i}" for i in range(16)]})
        elif r < 0.88:
            self.call("tokenize", "POST", "/v1/tokenize", {"model": CHAT, "prompt": f"tokens of {n}"})
        elif r < 0.92:
            model = self.rng.choice([CHAT, BASE, EMBED])
            self.call("load", "POST", f"/v1/models/{model}/load")
        elif r < 0.96:
            model = self.rng.choice([CHAT, BASE, EMBED])
            self.call("unload", "DELETE", f"/v1/models/{model}")
        else:
            self.call("chat keep_alive 0", "POST", "/v1/chat/completions", {
                "model": CHAT, "max_tokens": 4, "keep_alive": 0,
                "messages": [{"role": "user", "content": "Hi."}]})


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--duration", type=float, default=300)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the RSS baseline (default: 20%% of the run, at most 60)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    host = "127.0.0.1"
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration * 0.2)

    stats = Stats()
    fds_before = open_fds(args.pid)
    samples = []
    start = time.monotonic()
    deadline = start + args.duration

    def worker(i: int):
        client = Client(host, args.port, stats, random.Random(args.seed * 1000 + i))
        while time.monotonic() < deadline:
            client.one()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.clients)]
    for t in threads:
        t.start()
    next_sample = start
    while any(t.is_alive() for t in threads):
        now = time.monotonic()
        if now >= next_sample and now < deadline + 1:
            samples.append({"t": round(now - start, 1), "rss_bytes": rss_bytes(args.pid), "fds": open_fds(args.pid)})
            with stats.lock:
                done = sum(sum(s.values()) for s in stats.by_status.values())
            print(f"[soak] t={now - start:5.0f}s requests={done} rss={samples[-1]['rss_bytes'] / 2**20:.0f} MiB fds={samples[-1]['fds']}", file=sys.stderr)
            next_sample += 10
        time.sleep(0.5)
    for t in threads:
        t.join()
    # Connections close as their requests end: wait for the count to settle.
    settle = time.monotonic() + 10
    fds_after = open_fds(args.pid)
    while fds_after > fds_before and time.monotonic() < settle:
        time.sleep(0.5)
        fds_after = open_fds(args.pid)

    verdict = []
    if stats.failures:
        verdict.append(f"{len(stats.failures)}+ requests failed other than by the designed 429/503")
    rss_check = None
    if args.duration >= 180:
        first = [s["rss_bytes"] for s in samples if warmup <= s["t"] < warmup + 60]
        last = [s["rss_bytes"] for s in samples if s["t"] >= args.duration - 60]
        if first and last:
            growth = max(last) / max(first) - 1
            rss_check = {"first_minute_max": max(first), "last_minute_max": max(last), "growth": growth}
            if growth > 0.05:
                verdict.append(f"RSS grew {growth * 100:.1f}% from the first minute after warm-up to the last")
    if fds_after > fds_before + 4:
        verdict.append(f"open descriptors grew from {fds_before} to {fds_after} with no request in flight")

    routes = sorted(stats.by_status)
    report = {
        "duration_s": args.duration,
        "clients": args.clients,
        "requests": sum(sum(s.values()) for s in stats.by_status.values()),
        "dropped_streams": stats.dropped,
        "by_route": {
            r: {
                "status": dict(stats.by_status[r]),
                "p50_s": round(quantile(stats.latency[r], 0.5), 4),
                "p99_s": round(quantile(stats.latency[r], 0.99), 4),
            }
            for r in routes
        },
        "rss": {
            "start": samples[0]["rss_bytes"] if samples else None,
            "end": samples[-1]["rss_bytes"] if samples else None,
            "max": max((s["rss_bytes"] for s in samples), default=None),
            "check": rss_check,
        },
        "fds": {"before": fds_before, "after": fds_after, "max": max((s["fds"] for s in samples), default=None)},
        "samples": samples,
        "failures": stats.failures,
        "verdict": verdict or ["pass"],
    }
    print(json.dumps(report, indent=1))
    print("", file=sys.stderr)
    print(f"{'route':<24} {'requests':>8} {'p50 s':>8} {'p99 s':>8}  statuses", file=sys.stderr)
    for r in routes:
        row = report["by_route"][r]
        print(f"{r:<24} {sum(row['status'].values()):>8} {row['p50_s']:>8.3f} {row['p99_s']:>8.3f}  {row['status']}", file=sys.stderr)
    print(f"RSS MiB start {report['rss']['start'] / 2**20:.0f}, end {report['rss']['end'] / 2**20:.0f}, max {report['rss']['max'] / 2**20:.0f}; "
          f"fds before {fds_before}, after {fds_after}, max {report['fds']['max']}", file=sys.stderr)
    print("verdict: " + "; ".join(report["verdict"]), file=sys.stderr)
    return 0 if not verdict else 1


if __name__ == "__main__":
    sys.exit(main())
