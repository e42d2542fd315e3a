#!/usr/bin/env python3
"""Co-location benchmark (Python standard library only): does a language model keep its
speed when the server holds other models? Run by scripts/bench-serving.sh against one
`minerva serve --preload off`, or by hand against any Minerva on loopback.

Decode speed of MODEL (N concurrent 128-token greedy chats, aggregate generated tok/s,
medians of REPS) in each state of the server:

  alone          only MODEL loaded
  +1 idle        OTHER (a second language model) loaded, used once, then idle
  +2 idle        OTHER and EMBED (the embedding model) loaded, used once, then idle
  other busy     OTHER generating all the time from a client of its own
  embed busy     EMBED embedding batches all the time from a client of its own
  embed hits     a client sending one cached embedding input as fast as it can: no
                 forward pass, only HTTP, the cache and the registry's usage log

For the busy states the table also gives the busy model's rate as a fraction of its
own alone rate: two models that share the cores without collapsing add up to ~1.

Then two busy models (issue 17's shared cores): MODEL and OTHER with N chat clients
each, alone one after the other, then both at once; the aggregate of both at once (all
tokens of both over the time until both are done) against the better of the two alone,
and each model's rate at once as a share of its alone rate, summed (1.00: sharing the
cores lost nothing against running the same work one after the other; models that each
ran threads for all cores would fight over them and fall far below it).

Then the idle cost: CPU time of the server process (utime + stime from /proc/PID/stat)
over IDLE seconds with all three models loaded and no request, as % of one core.

And the sequence of the bug report (issue 22): sequential chats to MODEL, alone, after
one completion to OTHER (which stays loaded), and after OTHER is unloaded.
"""

import argparse
import http.client
import itertools
import json
import os
import statistics
import sys
import threading
import time

QUESTIONS = [  # prompts that make the model write all MAX_TOKENS tokens
    "Write a long story about a lighthouse keeper.",
    "Write a long story about a dragon who loves books.",
    "Write a long essay about the history of bread.",
    "Write a long story about two friends crossing a desert.",
    "Write a long letter to a friend about your garden.",
    "Write a long story about a robot learning to paint.",
    "Write a long essay about why rivers matter.",
    "Write a long story about a city under the sea.",
]


# The other model's prompt: any model continues it for all MAX_TOKENS tokens.
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"

# Texts no run has embedded before.
NONCE = time.time_ns()
FRESH = itertools.count()


STATES = ("alone", "+1 idle", "+2 idle", "other busy", "embed busy", "embed hits")
# The background client of each busy state.
BUSY = {"other busy": "other", "embed busy": "embed", "embed hits": "hits"}


def request(args, method, path, body=None, timeout=600):
    conn = http.client.HTTPConnection(args.host, args.port, timeout=timeout)
    payload = json.dumps(body) if body is not None else None
    conn.request(method, path, payload, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def chat(args, model, question, max_tokens):
    """One non-streaming greedy chat: (seconds, generated tokens)."""
    start = time.perf_counter()
    status, data = request(
        args,
        "POST",
        "/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )
    if status != 200:
        raise RuntimeError(f"chat to {model}: HTTP {status}: {data[:300]!r}")
    return time.perf_counter() - start, json.loads(data)["usage"]["completion_tokens"]


def complete(args, model, prompt, max_tokens):
    """One greedy text completion (the other model may be a base model without a chat
    template): generated tokens."""
    status, data = request(
        args,
        "POST",
        "/v1/completions",
        {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
    )
    if status != 200:
        raise RuntimeError(f"completion to {model}: HTTP {status}: {data[:300]!r}")
    return json.loads(data)["usage"]["completion_tokens"]


def concurrent_rate(args, n, model=None):
    """N clients of MODEL (or `model`), ROUNDS chats each, at once: aggregate generated
    tokens per second."""
    tokens, wall = concurrent_tokens(args, n, model or args.model)
    return tokens / wall


def concurrent_tokens(args, n, model):
    """N clients of `model`, ROUNDS chats each, at once: (generated tokens, seconds)."""
    tokens = []
    errors = []
    barrier = threading.Barrier(n)

    def client(c):
        barrier.wait()
        for r in range(args.rounds):
            try:
                if model == args.other:
                    # As the background client asks it (it may be a base model).
                    tokens.append(complete(args, model, COUNTING, args.max_tokens))
                else:
                    tokens.append(chat(args, model, QUESTIONS[(c + r) % len(QUESTIONS)], args.max_tokens)[1])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(str(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} chats to {model} failed, first: {errors[0]}")
    return sum(tokens), wall


def pair_rates(args, n):
    """MODEL and OTHER with N clients each: each alone, then both at once. Both at once
    counts all tokens of both over the time until the slower is done (so the aggregate
    is not flattered by the faster one finishing early)."""
    alone = {m: concurrent_rate(args, n, m) for m in (args.model, args.other)}
    done = {}

    def run(model):
        done[model] = concurrent_tokens(args, n, model)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(m,)) for m in (args.model, args.other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if len(done) != 2:
        raise RuntimeError("a model of the pair failed (its client's error is above)")
    return alone, {m: tokens / wall for m, (tokens, _) in done.items()}


class Background:
    """A client that keeps one model busy until stopped; counts its work per second."""

    def __init__(self, args, kind):
        self.args, self.kind = args, kind
        self.stop = threading.Event()
        self.units = 0
        self.errors = []
        self.thread = threading.Thread(target=self.run)

    def one(self):
        if self.kind == "other":
            return complete(self.args, self.args.other, COUNTING, self.args.max_tokens)
        if self.kind == "hits":
            body = {"model": self.args.embed, "input": "the one sentence this client sends every time"}
            status, data = request(self.args, "POST", "/v1/embeddings", body)
            if status != 200:
                raise RuntimeError(f"embeddings: HTTP {status}: {data[:200]!r}")
            return 1
        # Fresh texts every time: the encoder works (repeats would be answered from the
        # embedding cache without a forward pass).
        batch = next(FRESH)
        texts = [f"sentence {NONCE}-{batch}-{i} about libraries, rivers and the weather" for i in range(32)]
        status, data = request(self.args, "POST", "/v1/embeddings", {"model": self.args.embed, "input": texts})
        if status != 200:
            raise RuntimeError(f"embeddings: HTTP {status}: {data[:200]!r}")
        return len(texts)

    def run(self):
        while not self.stop.is_set():
            try:
                self.units += self.one()
            except Exception as e:  # noqa: BLE001 - reported by the caller
                self.errors.append(str(e))
                return

    def __enter__(self):
        self.one()  # loaded and warm before the clock starts
        self.started = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.rate = self.units / (time.perf_counter() - self.started)
        if self.errors:
            raise RuntimeError(f"background {self.kind} failed: {self.errors[0]}")


def unload(args, model):
    status, data = request(args, "DELETE", f"/v1/models/{model}")
    if status not in (200, 204, 404):
        raise RuntimeError(f"unloading {model}: HTTP {status}: {data[:200]!r}")


def load(args, model):
    status, data = request(args, "POST", f"/v1/models/{model}/load")
    if status != 200:
        raise RuntimeError(f"loading {model}: HTTP {status}: {data[:200]!r}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def background_alone_rate(args, kind):
    """The background model's own rate with nothing else running."""
    bg = Background(args, kind)
    bg.one()
    start = time.perf_counter()
    units = sum(bg.one() for _ in range(3))
    return units / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id (for its CPU time)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--other", default="gemma-3-270m")
    parser.add_argument("--embed", default="all-minilm-l6-v2")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--idle", type=float, default=10, help="seconds of the idle-CPU sample")
    parser.add_argument("--label", default="minerva")
    parser.add_argument(
        "--pair-clients",
        type=int,
        default=8,
        help="clients of each model in the two-busy-models part (0: skip it)",
    )
    parser.add_argument(
        "--states",
        nargs="+",
        default=list(STATES),
        choices=STATES,
        help="the server states to measure (default: all)",
    )
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the benchmark only talks to a loopback address")

    def emit(**row):
        print(json.dumps({"label": args.label, **row}), flush=True)

    # The bug report's sequence first, on a fresh server.
    for other in (args.other, args.embed):
        unload(args, other)
    seq = []
    for i in range(3):
        seq.append(("alone", chat(args, args.model, QUESTIONS[i], args.max_tokens)[0]))
    request(args, "POST", "/v1/completions", {"model": args.other, "prompt": "Once upon a time", "max_tokens": 16})
    for i in range(2):
        seq.append((f"{args.other} loaded", chat(args, args.model, QUESTIONS[3 + i], args.max_tokens)[0]))
    unload(args, args.other)
    for i in range(2):
        seq.append((f"{args.other} unloaded", chat(args, args.model, QUESTIONS[5 + i], args.max_tokens)[0]))
    emit(kind="sequence", seconds=[[state, round(s, 3)] for state, s in seq])

    alone_rates = {kind: background_alone_rate(args, kind) for kind in ("other", "embed", "hits")}
    for rep in range(args.reps):
        # Each rep starts at another state, so that a machine whose speed drifts during the
        # run (a VM) does not favour the state that always comes first.
        order = args.states[rep % len(args.states):] + args.states[: rep % len(args.states)]
        for state in order:
            unload(args, args.other)
            unload(args, args.embed)
            # An idle model has served before (its engine's threads exist, as in a server
            # that lives), it just has nothing to do now.
            if state in ("+1 idle", "+2 idle"):
                load(args, args.other)
                Background(args, "other").one()
            if state == "+2 idle":
                load(args, args.embed)
                Background(args, "embed").one()
            for n in args.clients:
                if state in BUSY:
                    with Background(args, BUSY[state]) as bg:
                        rate = concurrent_rate(args, n)
                    base = alone_rates[BUSY[state]]
                    emit(kind="rate", state=state, n=n, rep=rep, tok_s=rate, busy_share=bg.rate / base)
                else:
                    emit(kind="rate", state=state, n=n, rep=rep, tok_s=concurrent_rate(args, n))

    if args.pair_clients:
        unload(args, args.embed)
        load(args, args.other)
        complete(args, args.other, COUNTING, 8)
        for rep in range(args.reps):
            alone, both = pair_rates(args, args.pair_clients)
            emit(
                kind="pair",
                n=args.pair_clients,
                rep=rep,
                alone=alone,
                both=both,
            )

    load(args, args.other)
    load(args, args.embed)
    Background(args, "other").one()
    Background(args, "embed").one()
    chat(args, args.model, QUESTIONS[0], 8)
    time.sleep(1)  # let the last request's threads finish before the sample starts
    before = cpu_seconds(args.pid)
    time.sleep(args.idle)
    used = cpu_seconds(args.pid) - before
    emit(kind="idle", seconds=args.idle, cpu_percent=100 * used / args.idle)


def table(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    labels = []
    for r in rows:
        if r["label"] not in labels:
            labels.append(r["label"])
    for label in labels:
        mine = [r for r in rows if r["label"] == label]
        print(f"### {label}")
        print()
        for r in mine:
            if r["kind"] == "sequence":
                print("Sequential 128-token chats (seconds each): " + ", ".join(f"{s} ({state})" for state, s in r["seconds"]))
                print()
        clients = sorted({r["n"] for r in mine if r["kind"] == "rate"})
        head = "| state |" + "".join(f" N={n} tok/s | vs alone |" for n in clients) + " busy model's share of its alone rate |"
        print(head)
        print("|" + "---|" * (2 + 2 * len(clients)))
        def med(state, n, key="tok_s"):
            vals = [r[key] for r in mine if r["kind"] == "rate" and r["state"] == state and r["n"] == n]
            return statistics.median(vals) if vals else float("nan")
        for state in STATES:
            if not any(r["kind"] == "rate" and r["state"] == state for r in mine):
                continue
            line = f"| {state} |"
            for n in clients:
                line += f" {med(state, n):.1f} | {med(state, n) / med('alone', n):.2f}x |"
            if state in BUSY:
                line += " " + ", ".join(f"N={n}: {med(state, n, 'busy_share'):.2f}" for n in clients) + " |"
            else:
                line += " |"
            print(line)
        pairs = [r for r in mine if r["kind"] == "pair"]
        if pairs:
            model, other = list(pairs[0]["alone"])
            def pmed(part, m):
                return statistics.median(r[part][m] for r in pairs)
            # The aggregate's ratio per rep, then its median (each rep's own alone rates).
            ratio = statistics.median(
                sum(r["both"].values()) / max(r["alone"].values()) for r in pairs
            )
            print()
            print(f"Two busy models, {pairs[0]['n']} clients each (medians of {len(pairs)} reps, tok/s):")
            print()
            # Each model's rate at once as a share of its alone rate, summed: 1.00 means
            # sharing lost nothing against running the same work one after the other.
            shares = statistics.median(sum(r["both"][m] / r["alone"][m] for m in r["both"]) for r in pairs)
            print(
                f"| {model} alone | {other} alone | both at once: {model} | {other} | aggregate "
                "| aggregate vs the better alone | shares of the alone rates, summed |"
            )
            print("|---|---|---|---|---|---|---|")
            agg = statistics.median(sum(r["both"].values()) for r in pairs)
            print(
                f"| {pmed('alone', model):.1f} | {pmed('alone', other):.1f} | {pmed('both', model):.1f} "
                f"| {pmed('both', other):.1f} | {agg:.1f} | {ratio:.2f}x | {shares:.2f} |"
            )
        for r in mine:
            if r["kind"] == "idle":
                print()
                print(f"Idle CPU with three models loaded: {r['cpu_percent']:.2f} % of one core over {r['seconds']:.0f} s")
        print()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        table(sys.argv[2])
    else:
        main()
