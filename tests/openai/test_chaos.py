"""Faults against a real `minerva serve` process:

- SIGTERM with 16 streams in flight: every stream runs to its end (`[DONE]` and a
  finish reason) inside the shutdown grace, new connections are refused meanwhile, and
  the process exits with status 0;
- kill -9 while it serves with an embedding-cache file, in a models directory of its own,
  several rounds: each restart serves again, `minerva verify` passes, and the cache file
  is loaded or set aside with one warning, never a crash.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import REPO, Server, minerva_bin, server_env

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
STREAMS = 16
GRACE_S = 30


def stream_chat(host: str, port: int, i: int, first: threading.Event, out: dict):
    conn = http.client.HTTPConnection(host, port, timeout=120)
    body = {"model": CHAT, "max_tokens": 48, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": f"Count from {i} to {i + 40}."}]}
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        out["status"] = response.status
        events = []
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            events.append(line[6:])
            first.set()
        out["events"] = events
    except Exception as e:  # noqa: BLE001 - reported by the test
        out["error"] = repr(e)
    finally:
        first.set()
        conn.close()


def test_sigterm_lets_sixteen_streams_finish_and_refuses_new_connections(tmp_path):
    server = Server("minerva-sigterm", tmp_path / "server.log", ["--parallel", str(STREAMS)])
    url = urlparse(server.base_url)
    firsts = [threading.Event() for _ in range(STREAMS)]
    outs = [dict() for _ in range(STREAMS)]
    threads = [threading.Thread(target=stream_chat, args=(url.hostname, url.port, i, firsts[i], outs[i])) for i in range(STREAMS)]
    for t in threads:
        t.start()
    for e in firsts:
        assert e.wait(120), "a stream never started"
    server.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # New connections are refused while the streams finish.
    refused = False
    while time.monotonic() - signalled < 5 and not refused:
        try:
            socket.create_connection((url.hostname, url.port), timeout=1).close()
            time.sleep(0.05)
        except OSError:
            refused = True
    still_streaming = sum(t.is_alive() for t in threads)
    assert refused, "the server still accepts connections after SIGTERM"

    for t in threads:
        t.join(GRACE_S + 10)
    status = server.proc.wait(timeout=GRACE_S + 10)
    server.log.close()
    assert still_streaming > 0, "every stream had ended before the refusal was checked: nothing was in flight"
    for i, out in enumerate(outs):
        assert "error" not in out, f"stream {i}: {out['error']}"
        assert out["status"] == 200
        events = out["events"]
        assert events[-1] == "[DONE]", f"stream {i} was cut: {events[-3:]}"
        finals = [json.loads(e) for e in events[:-1] if json.loads(e)["choices"]]
        assert finals[-1]["choices"][0]["finish_reason"] in ("stop", "length"), finals[-1]
    assert status == 0, server.log_path.read_text()[-3000:]


def test_kill_9_while_serving_with_an_embedding_cache_file_loses_nothing(tmp_path):
    home = tmp_path / "home"
    models = home / "models"
    models.mkdir(parents=True)
    source = Path(os.environ.get("MINERVA_HOME", Path.home() / ".local/share/minerva")) / "models"
    os.link(source / f"{CHAT}.gguf", models / f"{CHAT}.gguf")
    shutil.copytree(source / EMBED, models / EMBED, copy_function=os.link)
    cache = home / "embeddings.cache"
    env = {**server_env(), "MINERVA_HOME": str(home)}
    rng = random.Random(7)
    for round_ in range(4):
        log = tmp_path / f"round{round_}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [minerva_bin(), "serve", "--addr", "127.0.0.1:0", "--threads", "1", "--embedding-cache-file", str(cache)],
                stdout=out, stderr=subprocess.STDOUT, env=env)
            try:
                base = wait_listening(proc, log)
                host, port = urlparse(base).hostname, urlparse(base).port
                # Serving works after the last round's kill, the cache included.
                assert post(host, port, "/v1/embeddings", {"model": EMBED, "input": ["a sentence", f"round {round_}"]})[0] == 200
                # Load in the background, then kill -9 at a random moment of it.
                load = threading.Thread(target=lambda: load_forever(host, port), daemon=True)
                load.start()
                time.sleep(rng.uniform(0.05, 1.0))
            finally:
                if round_ == 0:
                    # The first round ends gracefully: the cache file is written.
                    proc.send_signal(signal.SIGTERM)
                else:
                    proc.kill()
                proc.wait(timeout=60)
        text = log.read_text(errors="replace")
        assert "panicked" not in text, text[-3000:]
        if round_ == 0:
            assert cache.exists() and cache.stat().st_size > 0, "no cache file after a graceful stop"
        if round_ == 2:
            # A torn write, as a crash of a cache writer would leave: the next start sets the
            # file aside with a warning and serves from an empty cache.
            data = cache.read_bytes()
            cache.write_bytes(data[: len(data) // 2])
        if round_ == 3:
            warnings = [line for line in text.splitlines() if "cache" in line.lower() and "WARN" in line]
            assert len(warnings) == 1, warnings
    verify = subprocess.run([minerva_bin(), "verify"], env=env, capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    leftovers = [p for p in models.rglob("*") if p.name.startswith(".") and p.is_file()]
    assert not leftovers, f"temporary files left in the models directory: {leftovers}"


def wait_listening(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        text = log.read_text(errors="replace")
        if "minerva listening on " in text:
            base = text.split("minerva listening on ")[1].split()[0]
            try:
                conn = http.client.HTTPConnection(urlparse(base).hostname, urlparse(base).port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return base
            except OSError:
                pass
        time.sleep(0.1)
    pytest.fail(f"the server did not start:\n{log.read_text(errors='replace')[-3000:]}")


def post(host: str, port: int, path: str, body: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def load_forever(host: str, port: int):
    i = 0
    while True:
        i += 1
        try:
            post(host, port, "/v1/embeddings", {"model": EMBED, "input": [f"text {i} {j}" for j in range(8)]})
            post(host, port, "/v1/chat/completions", {"model": CHAT, "max_tokens": 8, "messages": [{"role": "user", "content": f"Hi {i}"}]})
        except OSError:
            return
