#!/usr/bin/env python3
"""Constrained-decoding overhead (Python standard library only): aggregate generated tok/s
of N concurrent chats to one model, free versus under a JSON schema (response_format),
against one running Minerva on loopback. Prints a table with the ratio.

  scripts/bench-structured.py --port 8080 [--model smollm2-135m-instruct] [--clients 1 8]

Both kinds sample at temperature 0.8 with max_tokens 128; the rate counts the tokens each
reply reports (usage.completion_tokens) over the wall time of the round, so replies of
different lengths compare fairly. Each cell is the median of REPS rounds, the kinds
interleaved so a drifting machine favours neither.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 32},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
        "hobbies": {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 24}},
        "city": {"type": "string", "maxLength": 32},
    },
    "required": ["name", "age", "colour", "hobbies", "city"],
    "additionalProperties": False,
}

SUBJECTS = ["a baker", "a pilot", "a nurse", "a sailor", "a painter", "a farmer", "a chef", "a teacher"]


def chat(args, subject, constrained):
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": f"Describe {subject} as a JSON record with name, age and hobbies."}],
        "temperature": 0.8,
        "max_tokens": 128,
    }
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    conn = http.client.HTTPConnection(args.host, args.port, timeout=600)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
    reply = json.loads(data)
    if constrained:
        json.loads(reply["choices"][0]["message"]["content"])  # it parses
    return reply["usage"]["completion_tokens"]


def rate(args, n, constrained):
    tokens = [0] * n
    errors = []

    def client(c):
        try:
            tokens[c] = chat(args, SUBJECTS[c % len(SUBJECTS)], constrained)
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
        raise RuntimeError(errors[0])
    return sum(tokens) / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("the benchmark only talks to a loopback address")
    chat(args, SUBJECTS[0], True)  # the vocabulary is built on the first constrained request
    rows = []
    for n in args.clients:
        free, constrained = [], []
        for _ in range(args.reps):
            free.append(rate(args, n, False))
            constrained.append(rate(args, n, True))
        rows.append((n, statistics.median(free), statistics.median(constrained)))
    print(f"| N | free tok/s | JSON schema tok/s | schema / free |  ({args.model}, medians of {args.reps})")
    print("|---|---|---|---|")
    for n, free, constrained in rows:
        print(f"| {n} | {free:.1f} | {constrained:.1f} | {constrained / free:.2f}x |")


if __name__ == "__main__":
    main()
