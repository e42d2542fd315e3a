"""Chaos rounds against the real `minerva` binary (driven by scripts/chaos.sh).

Each round kills a process with SIGKILL at a random moment of one kind of work, then
checks what a user would find afterwards:

- import: `minerva import` of a GGUF file (copying and hashing it);
- pull: `minerva pull` of a GGUF file from a local HTTP server that sends it slowly;
- load: `minerva serve` asked to load a model;
- cache: `minerva serve` with an embedding-cache file, stopped by SIGTERM and killed
  while it may be writing the file.

After every round: `minerva verify` passes (its store opening recovers interrupted
imports and removals), every model `minerva models` lists has its file, no temporary
data file of an import or removal is left, and a restarted server answers a chat (the
cache rounds: an embedding, with the cache file loaded or set aside with one warning).

Then two disk faults, when the process may mount a tmpfs (root):
- a full disk: an import into a models directory too small for it fails with a clear
  error, registers nothing and leaves no temporary file; the server still serves;
- a read-only models directory: the server serves from it, an import fails with a clear
  error and registers nothing.

Prints one line per round and a summary as JSON on the last line; exits non-zero on any
failed check.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
LOAD = "gemma-3-270m"
FILES = {CHAT: f"{CHAT}.gguf", EMBED: EMBED, LOAD: f"{LOAD}.gguf"}
LISTENING = re.compile(r"minerva listening on http://127\.0\.0\.1:(\d+)")


class Failure(Exception):
    pass


def run(bin_: str, home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINERVA_")}
    env["MINERVA_HOME"] = str(home)
    return subprocess.run([bin_, *args], env=env, capture_output=True, text=True, timeout=timeout)


def spawn(bin_: str, home: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINERVA_")}
    env["MINERVA_HOME"] = str(home)
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([bin_, *args], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def kill9(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def new_home(root: Path, name: str, models: Path, which: list[str]) -> Path:
    home = root / name
    (home / "models").mkdir(parents=True)
    for m in which:
        src = models / FILES[m]
        dst = home / "models" / FILES[m]
        if src.is_dir():
            shutil.copytree(src, dst, copy_function=os.link)
        else:
            os.link(src, dst)
    return home


class Served:
    """A `minerva serve` on a free port of its own."""

    started = 0

    def __init__(self, bin_: str, home: Path, *args: str):
        Served.started += 1
        self.log = home / f"serve-{Served.started}.log"
        self.proc = spawn(bin_, home, "serve", "--addr", "127.0.0.1:0", "--threads", "1", "--preload", "off",
                          "--warm-start", "0", *args, log=self.log)
        deadline = time.monotonic() + 60
        self.port = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Failure(f"serve exited with {self.proc.returncode}: {self.tail()}")
            m = LISTENING.search(self.log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                try:
                    self.get("/health")
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        kill9(self.proc)
        raise Failure(f"serve not healthy within 60 s: {self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=120) as r:
            return json.load(r)

    def post(self, path: str, body: dict, timeout: float = 300):
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)

    def chat(self):
        reply = self.post("/v1/chat/completions", {"model": CHAT, "max_tokens": 4, "temperature": 0,
                                                   "messages": [{"role": "user", "content": "Hi"}]})
        if not reply["choices"][0]["message"].get("content"):
            raise Failure(f"empty chat reply: {reply}")

    def embed(self, texts: list[str]):
        reply = self.post("/v1/embeddings", {"model": EMBED, "input": texts})
        if len(reply["data"]) != len(texts):
            raise Failure(f"{len(reply['data'])} embeddings for {len(texts)} inputs")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                kill9(self.proc)
                raise Failure("serve still running 60 s after SIGTERM")


def check_store(bin_: str, home: Path):
    """What a user finds after a crash: verify passes, every listed model has its file, no
    temporary data left."""
    verify = run(bin_, home, "verify")
    if verify.returncode != 0:
        raise Failure(f"minerva verify failed ({verify.returncode}): {verify.stdout[-1500:]}{verify.stderr[-1500:]}")
    listing = run(bin_, home, "models", "--json")
    if listing.returncode != 0:
        raise Failure(f"minerva models failed: {listing.stderr[-1500:]}")
    for model in json.loads(listing.stdout)["models"]:
        name = model.get("id") or model.get("name")
        path = model.get("path")
        if path and not Path(path).exists():
            raise Failure(f"{name} is listed without its file {path}")
    # A pull's partial download is kept on purpose (the next pull resumes it); lock files
    # are empty and stay.
    left = [p.name for p in (home / "models").iterdir()
            if (p.name.startswith(".import-") and p.name.endswith(".partial")) or p.name.startswith(".remove-")]
    if left:
        raise Failure(f"temporary files left after recovery: {left}")


def listed(bin_: str, home: Path) -> set[str]:
    return {m["id"] for m in json.loads(run(bin_, home, "models", "--json").stdout)["models"]}


class SlowFile(http.server.BaseHTTPRequestHandler):
    """Serves one file, honouring Range, at a limited rate (so a kill lands mid-download)."""

    path_on_disk: Path
    rate: int

    def log_message(self, *args):
        pass

    def do_GET(self):
        data_len = self.path_on_disk.stat().st_size
        start = 0
        m = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if m:
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{data_len - 1}/{data_len}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(data_len - start))
        self.end_headers()
        chunk = max(self.rate // 20, 1 << 16)
        try:
            with open(self.path_on_disk, "rb") as f:
                f.seek(start)
                while block := f.read(chunk):
                    self.wfile.write(block)
                    time.sleep(chunk / self.rate)
        except (BrokenPipeError, ConnectionResetError):
            pass


def file_server(path: Path, rate: int) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = type("Handler", (SlowFile,), {"path_on_disk": path, "rate": rate})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def kill_a_store_write(bin_, root, models, rng, name, args, max_delay, what_again):
    """Runs `minerva ARGS` (an import or a pull registering NAME), SIGKILLs it after a
    random delay, checks the store, then: if NAME is listed, the kill came after the
    commit and recovery finished it; if not, the same command run again must succeed."""
    home = new_home(root, name, models, [CHAT])
    proc = spawn(bin_, home, *args)
    delay = rng.uniform(0.0, max_delay)
    time.sleep(delay)
    kill9(proc)
    check_store(bin_, home)
    try:
        if name in listed(bin_, home):
            return f"killed after {delay * 1000:.0f} ms, after the commit: finished by recovery"
        again = run(bin_, home, *args, timeout=300)
        if again.returncode != 0:
            raise Failure(f"{args[0]} after the kill failed: {again.stderr[-1500:]}")
        check_store(bin_, home)
        return f"killed after {delay * 1000:.0f} ms, before the commit: {what_again}"
    finally:
        shutil.rmtree(home)


def round_import(bin_, root, models, rng, i):
    name = f"copy-{i}"
    args = ["import", str(models / FILES[CHAT]), "--id", name]
    return kill_a_store_write(bin_, root, models, rng, name, args, 0.6, "imported again")


def round_pull(bin_, root, models, rng, i, url, digest):
    name = f"pulled-{i}"
    args = ["pull", url, "--sha256", digest, "--as", name]
    return kill_a_store_write(bin_, root, models, rng, name, args, 2.5, "the pull again resumed and registered it")


def round_load(bin_, root, models, rng, i):
    home = new_home(root, f"load-{i}", models, [CHAT, LOAD])
    server = Served(bin_, home)
    result: dict = {}

    def load():
        try:
            server.post(f"/v1/models/{LOAD}/load", {})
        except Exception as e:  # noqa: BLE001 - the kill cuts it off
            result["error"] = repr(e)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    delay = rng.uniform(0.0, 1.5)
    time.sleep(delay)
    kill9(server.proc)
    t.join(10)
    check_store(bin_, home)
    again = Served(bin_, home)
    again.chat()
    again.post(f"/v1/models/{LOAD}/load", {})
    again.stop()
    shutil.rmtree(home)
    return f"killed after {delay * 1000:.0f} ms"


def round_cache(bin_, root, models, rng, i):
    home = new_home(root, f"cache-{i}", models, [CHAT, EMBED])
    cache = home / "embeddings.cache"
    server = Served(bin_, home, "--embedding-cache-file", str(cache))
    server.embed([f"sentence {i}-{k} about chaos" for k in range(64)])
    server.proc.send_signal(signal.SIGTERM)
    delay = rng.uniform(0.0, 0.3)
    time.sleep(delay)
    kill9(server.proc)
    check_store(bin_, home)
    again = Served(bin_, home, "--embedding-cache-file", str(cache))
    again.embed([f"sentence {i}-{k} about chaos" for k in range(8)])
    again.chat()
    again.stop()
    warnings = [line for line in again.log.read_text(errors="replace").splitlines()
                if "cache" in line.lower() and ("WARN" in line or "warn" in line)]
    if len(warnings) > 1:
        raise Failure(f"more than one warning about the cache file: {warnings}")
    shutil.rmtree(home)
    return f"SIGTERM then SIGKILL after {delay * 1000:.0f} ms" + (", cache set aside" if warnings else "")


def can_mount() -> bool:
    probe = Path(tempfile.mkdtemp())
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                              capture_output=True).returncode == 0 and \
            subprocess.run(["umount", str(probe)], capture_output=True).returncode == 0
    finally:
        probe.rmdir()


def mount_tmpfs(where: Path, size: str):
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


def full_disk(bin_, root, models):
    home = root / "full-disk"
    mount_tmpfs(home / "models", "120m")
    try:
        first = run(bin_, home, "import", str(models / FILES[EMBED]))
        if first.returncode != 0:
            raise Failure(f"importing {EMBED} into an empty 120 MiB directory failed: {first.stderr[-1500:]}")
        full = run(bin_, home, "import", str(models / FILES[CHAT]))
        message = full.stderr.lower()
        if full.returncode == 0 or "no space" not in message:
            raise Failure(f"an import into a full disk should fail saying so: {full.returncode} {full.stderr[-1500:]}")
        check_store(bin_, home)
        listing = json.loads(run(bin_, home, "models", "--json").stdout)["models"]
        names = {m["id"] for m in listing}
        if CHAT in names:
            raise Failure(f"{CHAT} is listed after its import failed")
        server = Served(bin_, home)
        server.embed(["still serving"])
        server.stop()
        return full.stderr.strip().splitlines()[-1]
    finally:
        subprocess.run(["umount", str(home / "models")], check=False)


def read_only(bin_, root, models):
    home = root / "read-only"
    mount_tmpfs(home / "models", "300m")
    try:
        for m in (CHAT, EMBED):
            done = run(bin_, home, "import", str(models / FILES[m]))
            if done.returncode != 0:
                raise Failure(f"import of {m} failed: {done.stderr[-1500:]}")
        subprocess.run(["mount", "-o", "remount,ro", str(home / "models")], check=True)
        server = Served(bin_, home)
        server.chat()
        server.embed(["served from a read-only directory"])
        refused = run(bin_, home, "import", str(models / FILES[LOAD]))
        if refused.returncode == 0 or "read-only" not in refused.stderr.lower():
            raise Failure(f"an import into a read-only directory should fail saying so: {refused.returncode} {refused.stderr[-1500:]}")
        names = {m["id"] for m in json.loads(run(bin_, home, "models", "--json").stdout)["models"]}
        if LOAD in names:
            raise Failure(f"{LOAD} is listed after its import failed")
        server.chat()
        server.stop()
        return refused.stderr.strip().splitlines()[-1]
    finally:
        subprocess.run(["umount", str(home / "models")], check=False)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--models", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="minerva-chaos-", dir=args.models.parent))
    server = None
    try:
        served_file = root / "served.gguf"
        os.link(args.models / FILES[CHAT], served_file)
        server, port = file_server(served_file, rate=64 << 20)
        url, digest = f"http://127.0.0.1:{port}/{CHAT}.gguf", sha256(served_file)
        kinds = ["import", "pull", "load", "cache"]
        results = {k: {"run": 0, "survived": 0} for k in kinds}
        failures = []
        for i in range(args.rounds):
            kind = kinds[i % len(kinds)]
            results[kind]["run"] += 1
            start = time.monotonic()
            try:
                if kind == "import":
                    what = round_import(args.bin, root, args.models, rng, i)
                elif kind == "pull":
                    what = round_pull(args.bin, root, args.models, rng, i, url, digest)
                elif kind == "load":
                    what = round_load(args.bin, root, args.models, rng, i)
                else:
                    what = round_cache(args.bin, root, args.models, rng, i)
                results[kind]["survived"] += 1
                print(f"round {i + 1:2}/{args.rounds} {kind:6} ok    {what} ({time.monotonic() - start:.1f} s)", flush=True)
            except Failure as e:
                failures.append(f"round {i + 1} ({kind}): {e}")
                print(f"round {i + 1:2}/{args.rounds} {kind:6} FAIL  {e}", flush=True)
        disk = {}
        if can_mount():
            for name, fault in (("full_disk", full_disk), ("read_only", read_only)):
                try:
                    disk[name] = fault(args.bin, root, args.models)
                    print(f"{name:9} ok    {disk[name]}", flush=True)
                except Failure as e:
                    failures.append(f"{name}: {e}")
                    disk[name] = f"FAIL: {e}"
                    print(f"{name:9} FAIL  {e}", flush=True)
        else:
            print("full_disk and read_only skipped: this process may not mount a tmpfs (run as root)", flush=True)
        summary = {"rounds": results, "disk": disk, "failures": failures}
        print(json.dumps(summary))
        return 1 if failures else 0
    finally:
        if server is not None:
            server.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
