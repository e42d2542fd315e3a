#!/usr/bin/env python3
"""Minerva's embeddings beside sentence-transformers on the same model directory.

Run through scripts/bench-embeddings.sh (it builds Minerva, sets up the reference venv
and starts the servers). Prints two Markdown tables, medians of RUNS runs each:

1. Throughput (sentences/s), single-sentence latency p50 and cosine to
   sentence-transformers' vectors, on 1000 deterministic sentences of 5-120 words cut
   from a public text (GPL-3) with a fixed seed. sentence-transformers: CPU, 2 threads,
   best of batch sizes 1/8/32/128 (batch 1 over the 100 latency sentences). Minerva: /v1/embeddings with concurrent clients, one
   request holding all sentences, and `minerva embed --file`.
2. A repeated-text workload (Zipf over the same sentences, fixed seed) through a server
   with its embedding cache: hit rate and hit latency end to end, beside
   sentence-transformers encoding each request.
"""

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import threading
import time

import numpy as np


def sentences(path, n, seed):
    words = open(path, encoding="utf-8").read().split()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(5, 120)
        start = rng.randrange(0, len(words) - length)
        out.append(" ".join(words[start:start + length]))
    return out


def zipf_workload(texts, n, seed, s=1.1):
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** s for rank in range(len(texts))]
    return rng.choices(texts, weights=weights, k=n)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, port, model):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.model = model

    def embed(self, inputs):
        body = json.dumps({"model": self.model, "input": inputs})
        self.conn.request("POST", "/v1/embeddings", body, {"content-type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
        return [d["embedding"] for d in json.loads(data)["data"]]

    def get(self, path):
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return json.loads(response.read())


def cosine_min(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def run_st(args, texts, latency_texts, zipf):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    model = SentenceTransformer(args.model_dir, device="cpu")
    model.encode(texts[:64], batch_size=32)  # warm-up
    by_batch = {}
    vectors = None
    # Batch 1 over the latency sentences (one at a time): the same loop gives the p50
    # latency and the batch-1 throughput (1000 sentences one by one would take minutes).
    lat, rate1 = [], []
    for _ in range(args.runs):
        one = []
        for text in latency_texts:
            t = time.perf_counter()
            model.encode([text], batch_size=1)
            one.append(time.perf_counter() - t)
        lat.append(pct(one, 50))
        rate1.append(len(one) / sum(one))
    by_batch[1] = statistics.median(rate1)
    for bs in (8, 32, 128):
        rates = []
        for _ in range(args.runs):
            t = time.perf_counter()
            v = model.encode(texts, batch_size=bs, convert_to_numpy=True)
            rates.append(len(texts) / (time.perf_counter() - t))
        by_batch[bs] = statistics.median(rates)
        if bs == 32:
            vectors = v
        print(f"[bench] sentence-transformers batch {bs}: {by_batch[bs]:.1f} sentences/s", file=sys.stderr)
    # Without a cache every request of the repeated-text workload costs one encode: its
    # rate is measured on the workload's first 300 requests.
    head = zipf[:300]
    zipf_times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        for text in head:
            model.encode([text], batch_size=1)
        zipf_times.append(time.perf_counter() - t)
    return {
        "by_batch": by_batch,
        "best_batch": max(by_batch, key=by_batch.get),
        "throughput": max(by_batch.values()),
        "latency_p50_ms": statistics.median(lat) * 1e3,
        "vectors": vectors,
        "zipf_rps": len(head) / statistics.median(zipf_times),
    }


def run_minerva(args, texts, latency_texts, st_vectors, port, dtype):
    c = Client(port, args.model)
    c.embed(texts[:64])  # loads the model, warms up
    big, conc, lat, cos = [], [], [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        v = c.embed(texts)
        big.append(len(texts) / (time.perf_counter() - t))
        cos.append(cosine_min(v, st_vectors))

        chunks = [texts[i::args.clients] for i in range(args.clients)]
        errors = []

        def worker(chunk):
            try:
                client = Client(port, args.model)
                for text in chunk:
                    client.embed(text)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(chunk,)) for chunk in chunks]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        if errors:
            raise errors[0]
        conc.append(len(texts) / (time.perf_counter() - t))

        one = []
        for text in latency_texts:
            t = time.perf_counter()
            c.embed(text)
            one.append(time.perf_counter() - t)
        lat.append(pct(one, 50))
    cli = []
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run([args.minerva, "embed", "-m", args.model, "--dtype", dtype, "--file", args.sentences_file, "--json"],
                       check=True, stdout=subprocess.DEVNULL)
        cli.append(len(texts) / (time.perf_counter() - t))
    stats = c.get("/v1/embeddings/stats")["models"][args.model]
    return {
        "big": statistics.median(big),
        "concurrent": statistics.median(conc),
        "latency_p50_ms": statistics.median(lat) * 1e3,
        "cli": statistics.median(cli),
        "cosine_min": min(cos),
        "stats": stats,
    }


def run_zipf(args, zipf):
    hit_rates, hit_p50, miss_p50, rps = [], [], [], []
    for run in range(args.runs):
        # A fresh server per run: every run starts with an empty cache.
        port = args.cache_port + run
        server = subprocess.Popen([args.minerva, "serve", "--addr", f"127.0.0.1:{port}"],
                                  stderr=subprocess.DEVNULL)
        try:
            wait_ready(port)
            c = Client(port, args.model)
            c.get(f"/v1/models/{args.model}")
            c.conn.request("POST", f"/v1/models/{args.model}/load")
            c.conn.getresponse().read()
            seen, hits, misses = set(), [], []
            t0 = time.perf_counter()
            for text in zipf:
                t = time.perf_counter()
                c.embed(text)
                (hits if text in seen else misses).append(time.perf_counter() - t)
                seen.add(text)
            rps.append(len(zipf) / (time.perf_counter() - t0))
            cache = c.get("/v1/embeddings/stats")["cache"]
            hit_rates.append(cache["hits"] / (cache["hits"] + cache["misses"]))
            hit_p50.append(pct(hits, 50))
            miss_p50.append(pct(misses, 50))
        finally:
            server.terminate()
            server.wait()
    return {
        "hit_rate": statistics.median(hit_rates),
        "hit_p50_ms": statistics.median(hit_p50) * 1e3,
        "miss_p50_ms": statistics.median(miss_p50) * 1e3,
        "rps": statistics.median(rps),
    }


def wait_ready(port):
    for _ in range(600):
        try:
            Client(port, "").get("/health")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--model", default="all-minilm-l6-v2")
    p.add_argument("--minerva", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cache-port", type=int, required=True)
    p.add_argument("--dtype-port", action="append", default=[], metavar="DTYPE=PORT",
                   help="a server started with --embedding-dtype DTYPE (repeatable: bf16=PORT, int8=PORT)")
    p.add_argument("--sentences-file", required=True)
    p.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seed", type=int, default=20261123)
    p.add_argument("--zipf-requests", type=int, default=10000)
    args = p.parse_args()

    texts = sentences(args.text, 1000, args.seed)
    json.dump(texts, open(args.sentences_file, "w"))
    latency_texts = texts[:100]
    zipf = zipf_workload(texts, args.zipf_requests, args.seed + 1)

    print("[bench] sentence-transformers", file=sys.stderr)
    st = run_st(args, texts, latency_texts, zipf)
    print("[bench] minerva", file=sys.stderr)
    mv = run_minerva(args, texts, latency_texts, st["vectors"], args.port, "f32")
    reduced = []
    for spec in args.dtype_port:
        dtype, port = spec.split("=")
        print(f"[bench] minerva, {dtype}", file=sys.stderr)
        reduced.append((dtype, run_minerva(args, texts, latency_texts, st["vectors"], int(port), dtype)))
    print("[bench] minerva, repeated texts (Zipf) with the cache", file=sys.stderr)
    zp = run_zipf(args, zipf)

    words = [len(t.split()) for t in texts]
    print(f"\n### Embeddings: 1000 sentences of {min(words)}-{max(words)} words (mean {statistics.mean(words):.0f}), "
          f"all-MiniLM-L6-v2, medians of {args.runs} runs\n")
    head = "| measure | sentence-transformers | Minerva f32 | ratio |"
    rule = "|---|---|---|---|"
    for dtype, _ in reduced:
        head += f" Minerva {dtype} | ratio |"
        rule += "---|---|"
    print(head)
    print(rule)
    best = st["throughput"]
    bb = ", ".join(f"b{k} {v:.0f}" for k, v in sorted(st["by_batch"].items()))

    def row(label, reference, key, fmt=".1f"):
        line = f"| {label} | {reference} | {mv[key]:{fmt}} | {mv[key] / float(reference.split()[0]):.2f}x |"
        for _, mb in reduced:
            line += f" {mb[key]:{fmt}} | {mb[key] / float(reference.split()[0]):.2f}x |"
        print(line)

    row("throughput, one request of 1000 (sentences/s)", f"{best:.1f} (best: batch {st['best_batch']}; {bb})", "big")
    row(f"throughput, {args.clients} concurrent clients, 1 sentence per request (sentences/s)", f"{best:.1f}", "concurrent")
    row("throughput, `minerva embed --file` incl. model load (sentences/s)", f"{best:.1f}", "cli")
    row("single-sentence latency p50 (ms, HTTP for Minerva)", f"{st['latency_p50_ms']:.2f}", "latency_p50_ms", ".2f")
    line = f"| cosine min vs sentence-transformers | 1 | {mv['cosine_min']:.6f} | |"
    for _, mb in reduced:
        line += f" {mb['cosine_min']:.6f} | |"
    print(line)
    s = mv["stats"]
    print(f"\nMinerva batching: {s['batches']} forward passes, {s['merged_batches']} merged several requests, "
          f"{s['tokens']} tokens (padding-free), token budget {s['token_budget']}, "
          f"strategy {s['strategy']}")

    print(f"\n### Repeated texts: {len(zipf)} single-text requests, Zipf(s=1.1) over the 1000 sentences "
          f"({len(set(zipf))} distinct), medians of {args.runs} runs\n")
    print("| measure | sentence-transformers (no cache) | Minerva (cache) | ratio |")
    print("|---|---|---|---|")
    print(f"| cache hit rate | - | {100 * zp['hit_rate']:.1f} % | |")
    print(f"| latency p50 of a hit, end to end (ms) | {st['latency_p50_ms']:.2f} | {zp['hit_p50_ms']:.3f} "
          f"| {zp['hit_p50_ms'] / st['latency_p50_ms']:.3f}x |")
    print(f"| latency p50 of a miss (ms) | {st['latency_p50_ms']:.2f} | {zp['miss_p50_ms']:.2f} "
          f"| {zp['miss_p50_ms'] / st['latency_p50_ms']:.2f}x |")
    print(f"| requests/s over the workload | {st['zipf_rps']:.1f} | {zp['rps']:.1f} | {zp['rps'] / st['zipf_rps']:.2f}x |")


if __name__ == "__main__":
    main()
