"""Prompts and outputs stay out of the logs: a server logging at trace level for every
target writes neither a chat's prompt nor its reply nor an embedded text; with
`--request-log DIR` the generations (and only they) go to that directory's day file."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone
from urllib.parse import urlparse

from conftest import minerva_bin, server_env
from test_chaos import CHAT, EMBED, post, wait_listening

MARKER = "Zebracorn-4711"


def serve(tmp_path, name: str, extra: list[str]):
    log = tmp_path / f"{name}.log"
    out = open(log, "wb")
    env = {**server_env(), "MINERVA_LOG": "trace"}
    proc = subprocess.Popen([minerva_bin(), "serve", "--addr", "127.0.0.1:0", "--threads", "1", *extra],
                            stdout=out, stderr=subprocess.STDOUT, env=env)
    base = wait_listening(proc, log)
    return proc, out, log, urlparse(base)


def ask(url) -> str:
    status, body = post(url.hostname, url.port, "/v1/chat/completions", {
        "model": CHAT, "max_tokens": 8, "temperature": 0,
        "messages": [{"role": "user", "content": f"Repeat after me: {MARKER}"}]})
    assert status == 200, body
    return json.loads(body)["choices"][0]["message"]["content"]


def stop(proc, out):
    proc.terminate()
    assert proc.wait(timeout=60) == 0
    out.close()


def test_no_log_holds_a_prompt_or_an_output(tmp_path):
    proc, out, log, url = serve(tmp_path, "quiet", [])
    try:
        reply = ask(url)
        status, _ = post(url.hostname, url.port, "/v1/embeddings", {"model": EMBED, "input": f"embed {MARKER}"})
        assert status == 200
    finally:
        stop(proc, out)
    text = log.read_text(errors="replace")
    assert len(text.splitlines()) > 100, "the server logged at trace level"
    assert MARKER not in text
    assert reply.strip() and reply.strip() not in text, reply


def leave_a_stream(url) -> str:
    """Starts a long streamed chat, reads its first text chunk and hangs up; that text."""
    import http.client
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps({
        "model": CHAT, "max_tokens": 1500, "temperature": 0, "stream": True,
        "messages": [{"role": "user", "content": f"Count to one thousand, {MARKER}."}]}),
        {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    text = ""
    while not text:
        line = response.readline().decode()
        if line.startswith("data: ") and line.strip() != "data: [DONE]":
            text = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
    conn.close()
    return text


def test_the_request_log_holds_generations_when_asked_for(tmp_path):
    logs = tmp_path / "requests"
    proc, out, log, url = serve(tmp_path, "logged", ["--request-log", str(logs), "--request-log-days", "3"])
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    path = logs / f"requests-{day}.jsonl"
    try:
        reply = ask(url)
        first = leave_a_stream(url)
        # The dropped stream's line is written when the server sees the client gone.
        deadline = time.monotonic() + 30
        while not path.exists() or len(path.read_text().splitlines()) < 2:
            assert time.monotonic() < deadline, path.exists() and path.read_text()
            time.sleep(0.05)
    finally:
        stop(proc, out)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 2, lines
    dropped = lines[1]
    assert dropped["finish_reason"] == "client_disconnected" and MARKER in dropped["prompt"]
    assert dropped["output"].startswith(first), (dropped["output"], first)
    entry = lines[0]
    assert MARKER in entry["prompt"] and entry["output"] == reply
    assert entry["model"] == CHAT and entry["api"] == "chat"
    assert entry["stages"]["generated_tokens"] > 0
    # Still nothing in the server's own log.
    assert MARKER not in log.read_text(errors="replace")
