#!/usr/bin/env python3
"""Writes the request traces that `minerva bench pool --trace FILE` replays (bench/traces/).

Deterministic (fixed seeds), so the committed traces can be regenerated exactly:
    python3 scripts/make-pool-traces.py
Each line is `<milliseconds from start> <model id>`.
"""
import random
from pathlib import Path

CHAT, BASE, EMBED = "smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"
OUT = Path(__file__).resolve().parent.parent / "bench" / "traces"


def zipf(rng, n, s=1.2):
    # Popularity: the chat model first, then embeddings, then the base model.
    ranks = [CHAT, EMBED, BASE]
    weights = [1 / (k + 1) ** s for k in range(len(ranks))]
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(1 / 150)
        out.append((t, rng.choices(ranks, weights)[0]))
    return out


def bursts(rng, n_bursts, size=10, gap_ms=1500):
    t, out = 0.0, []
    models = [CHAT, BASE, EMBED]
    for _ in range(n_bursts):
        model = rng.choice(models)
        for _ in range(size):
            out.append((t + rng.uniform(0, 200), model))
        t += gap_ms
    return out


def periodic(rng, periods, period_ms=2000):
    # Every period: the chat model, then the base model 600 ms later (a pipeline), and an
    # embedding now and then: the pattern a sequential preloader can learn.
    out = []
    for p in range(periods):
        t = p * period_ms
        out.append((t, CHAT))
        out.append((t + 600, BASE))
        if p % 3 == 0:
            out.append((t + 1200, EMBED))
    return out


def mixed(rng):
    out = [(t, m) for t, m in zipf(rng, 80)]
    offset = max(t for t, _ in out) + 500
    out += [(t + offset, m) for t, m in bursts(rng, 6)]
    offset = max(t for t, _ in out) + 500
    out += [(t + offset, m) for t, m in periodic(rng, 8)]
    offset = max(t for t, _ in out) + 500
    out += [(t + offset, m) for t, m in zipf(rng, 60)]
    return out


def write(name, requests, about):
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [f"# {about}", "# <ms from start> <model id>"]
    lines += [f"{int(t)} {m}" for t, m in sorted(requests)]
    (OUT / f"{name}.trace").write_text("\n".join(lines) + "\n")


write("zipf", zipf(random.Random(1), 150), "Zipf(1.2) over three models, Poisson arrivals every 150 ms on average")
write("bursts", bursts(random.Random(2), 12), "bursts of 10 requests for one model, a new burst every 1.5 s")
write("periodic", periodic(random.Random(3), 15), "chat model, then base model 600 ms later, every 2 s; embeddings every third period")
write("mixed", mixed(random.Random(4)), "Zipf, then bursts, then the periodic pipeline, then Zipf again")
