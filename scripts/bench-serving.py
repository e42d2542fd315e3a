#!/usr/bin/env python3
"""Load generator for scripts/bench-serving.sh (Python standard library only).

Drives one OpenAI-compatible server on 127.0.0.1 with streaming chat requests and prints
one JSON line per measurement:

  clients N   N concurrent clients, each sending ROUNDS short questions one after the
              other (temperature 0, max_tokens 128): aggregate generated tok/s, mean and
              p95 time to first token, mean latency.
  burst       8 requests at once sharing a ~400-token system prompt, first with a system
              prompt no server has seen (cold, a fresh nonce per run), then again with new
              questions (warm): mean and p95 time to first token.
  copy        one client, copy-heavy requests one after the other (repeat a ~300-token
              text word for word, reformat a list, quote sentences of a given document;
              256 tokens, temperature 0): single-stream decode tok/s (tokens after the
              first over the time after the first), and a digest of the answers' text so
              that runs can be checked to give the same tokens.

Bounded: every request has a timeout, the host must be a loopback address, and the work
per run is fixed.
"""

import argparse
import hashlib
import http.client
import json
import random
import statistics
import sys
import threading
import time

QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do plants make food?",
    "What is a prime number?",
    "Who wrote Romeo and Juliet?",
    "How far is the Moon from the Earth?",
    "What is the boiling point of water?",
    "Why do cats purr?",
    "What causes the seasons?",
    "How does a rainbow form?",
    "What is the largest ocean?",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Why do leaves change color in autumn?",
    "What is the speed of light?",
    "How do bees make honey?",
    "What is gravity?",
    "Why is the ocean salty?",
    "What do pandas eat?",
    "How does a compass work?",
    "What is an atom?",
    "Why do we have day and night?",
    "What is the tallest mountain?",
    "How do fish breathe?",
    "What is a volcano?",
    "Why do birds migrate?",
    "What is the water cycle?",
    "How do airplanes fly?",
    "What is the Milky Way?",
    "Why do we dream?",
    "What is electricity?",
    "How does the heart pump blood?",
]

SYSTEM_PARAGRAPH = (
    "You are the assistant of the Riverside Public Library. You answer questions from "
    "visitors about opening hours, borrowing rules, renewals, late fees, lost cards, "
    "the digital collection, e-books and audiobooks, study rooms that can be booked for "
    "two hours at a time, the maker space with its 3D printers, printing and scanning, "
    "events for children, teenagers and adults, language cafes, author readings, and "
    "the local history archive. Keep answers short, friendly and accurate. If you do "
    "not know something, say so and suggest asking a librarian at the front desk. "
)


def system_prompt(nonce):
    # About 400 tokens with SmolLM2's tokenizer; the nonce makes each cold burst cold.
    return f"Session {nonce}. " + SYSTEM_PARAGRAPH * 4


def stream_chat(host, port, model, messages, max_tokens, timeout):
    """One streaming chat request: (ttft seconds, latency seconds, generated tokens, text,
    the server's own `timings` of its last chunk or None)."""
    body = json.dumps(
        {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    ttft = None
    chunks = 0
    text = []
    usage_tokens = None
    timings = None
    for raw in response:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if event.get("usage"):
            usage_tokens = event["usage"].get("completion_tokens")
        if event.get("timings"):
            timings = event["timings"]
        for choice in event.get("choices", []):
            if choice.get("delta", {}).get("content"):
                text.append(choice["delta"]["content"])
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - start
    latency = time.perf_counter() - start
    conn.close()
    tokens = usage_tokens if usage_tokens is not None else chunks
    return (ttft if ttft is not None else latency), latency, tokens, "".join(text), timings


COPY_TOKENS = 256

COPY_TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a "
    "lantern, a logbook and a flask of tea. From the top he could see the fishing boats "
    "returning to the harbour, the gulls circling the cliffs, and the lights of the town "
    "coming on one by one along the bay. He wrote the weather in the logbook, the wind's "
    "direction and strength, the height of the waves and the names of the boats that came "
    "home. On stormy nights he stayed awake until the last boat was safe, watching the beam "
    "sweep across the black water. In the morning he walked down to the village for bread "
    "and news, and the fishermen thanked him with a share of their catch. Years later, when "
    "the light was automated, the keeper kept the logbooks in a wooden chest, and children "
    "from the school came to read about the storms, the wrecks and the rescues of the old "
    "days, when a man with a lantern kept the sailors of the bay alive."
)

COPY_LIST = (
    "apples - 3 kg, bread - 2 loaves, milk - 4 litres, eggs - 12, butter - 250 g, "
    "cheese - 500 g, tomatoes - 1 kg, onions - 2 kg, rice - 1 kg, olive oil - 1 bottle, "
    "coffee - 500 g, tea - 100 bags"
)


def copy_requests():
    """Copy-heavy chats: the answer repeats, reformats or quotes text of the prompt."""
    return [
        user(f"Repeat the following text word for word, without any change:\n\n{COPY_TEXT}"),
        user(f"Rewrite this shopping list as a numbered list, one item per line, keeping every quantity:\n\n{COPY_LIST}"),
        user(f"Here is a document:\n\n{COPY_TEXT}\n\nQuote, word for word, the three sentences of the document that mention the logbook."),
    ]


def client_model(args, c):
    """The model client `c` names: with `--adapters K`, the base with adapter `c mod K`."""
    if args.adapters:
        return f"{args.model}+{args.adapter_prefix}{c % args.adapters}"
    return args.model


def run_concurrent(args, jobs):
    """Runs `jobs` (lists of message lists, one list per client) at once; returns results."""
    results = []
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(jobs))

    def client(c, conversations):
        barrier.wait()
        for messages in conversations:
            try:
                r = stream_chat(args.host, args.port, client_model(args, c), messages, args.max_tokens, args.timeout)
            except Exception as e:  # noqa: BLE001 - reported, then the run fails
                with lock:
                    errors.append(str(e))
                return
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client, args=(i, c)) for i, c in enumerate(jobs)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return results, wall


def p95(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(0.95 * len(ordered))) - 1))]


def summary(results, wall):
    ttfts = [r[0] for r in results]
    return {
        "requests": len(results),
        "tokens": sum(r[2] for r in results),
        "tok_s": sum(r[2] for r in results) / wall,
        "ttft_mean": statistics.mean(ttfts),
        "ttft_p95": p95(ttfts),
        "latency_mean": statistics.mean(r[1] for r in results),
        # Where the server says the time went (Minerva's and llama-server's final chunks
        # carry `timings`; Minerva's add the model, prepare and queue stages), mean ms.
        "server_stages_ms": {
            key: statistics.mean(r[4][key] for r in results if r[4] and key in r[4])
            for key in ("model_ms", "prepare_ms", "queue_ms", "prompt_ms", "predicted_ms")
            if any(r[4] and key in r[4] for r in results)
        },
    }


def user(question, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": question}]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--label", required=True)
    parser.add_argument("--clients", type=int, nargs="*", default=[])
    parser.add_argument("--burst", action="store_true", help="run the shared-prefix cold and warm bursts")
    parser.add_argument("--copy", action="store_true", help="run the copy-heavy single-stream workload")
    parser.add_argument("--rounds", type=int, default=2, help="questions per client")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--adapters",
        type=int,
        default=0,
        help="spread the clients over K LoRA adapters: client c names MODEL+PREFIX{c mod K} (scripts/bench-adapters.sh)",
    )
    parser.add_argument("--adapter-prefix", default="bench-")
    parser.add_argument(
        "--load",
        nargs="*",
        default=[],
        help="models to load first and keep loaded (Minerva's POST /v1/models/{id}/load): the server as it lives, with its other models in memory",
    )
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the load generator only talks to a loopback address")
    rng = random.Random(7)

    for other in args.load:
        conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
        conn.request("POST", f"/v1/models/{other}/load", "", {"Content-Type": "application/json"})
        response = conn.getresponse()
        if response.status != 200:
            sys.exit(f"loading {other}: HTTP {response.status}: {response.read()[:300]!r}")
        response.read()
        conn.close()

    # Warm-up: loads the model (Minerva loads on first use) and touches every code path.
    for c in range(max(1, args.adapters)):
        stream_chat(args.host, args.port, client_model(args, c), user("Hello!"), 8, args.timeout)

    for rep in range(args.reps):
        for n in args.clients:
            questions = QUESTIONS[:]
            rng.shuffle(questions)
            jobs = [[user(questions[(c * args.rounds + r) % len(questions)]) for r in range(args.rounds)] for c in range(n)]
            results, wall = run_concurrent(args, jobs)
            print(json.dumps({"label": args.label, "scenario": f"N={n}", "rep": rep, **summary(results, wall)}), flush=True)
        if args.burst:
            system = system_prompt(f"{time.time_ns() % 10**9}-{rep}")
            for phase, offset in (("cold burst", 0), ("warm burst", 8)):
                jobs = [[user(QUESTIONS[offset + i], system)] for i in range(8)]
                results, wall = run_concurrent(args, jobs)
                print(json.dumps({"label": args.label, "scenario": phase, "rep": rep, **summary(results, wall)}), flush=True)
        if args.copy:
            results = []
            started = time.perf_counter()
            for messages in copy_requests():
                results.append(stream_chat(args.host, args.port, args.model, messages, COPY_TOKENS, args.timeout))
            wall = time.perf_counter() - started
            decode = sum(r[2] - 1 for r in results) / sum(r[1] - r[0] for r in results)
            digest = hashlib.sha256("\x00".join(r[3] for r in results).encode()).hexdigest()[:16]
            row = {"label": args.label, "scenario": "copy N=1", "rep": rep, **summary(results, wall)}
            print(json.dumps({**row, "decode_tok_s": decode, "text_digest": digest}), flush=True)


if __name__ == "__main__":
    main()
