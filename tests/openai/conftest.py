"""Fixtures: `minerva serve` processes for the OpenAI client tests.

The binary is $MINERVA_BIN (scripts/test-openai-client.sh sets it; default
target/release/minerva). Each server binds 127.0.0.1:0 and the test reads the real address
from the line the server prints (`minerva listening on http://ADDR (...)`), so there is no
race for a port; then it polls GET /health until it answers 200, within a deadline.
At the end of the session the server gets SIGTERM and must exit with status 0.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 30.0
SHUTDOWN_DEADLINE_S = 30.0
API_KEY = "test-key"
LISTENING = re.compile(r"minerva listening on (http://\S+)")


def minerva_bin() -> str:
    path = Path(os.environ.get("MINERVA_BIN", REPO / "target" / "release" / "minerva"))
    if not path.is_absolute():
        path = REPO / path
    if not os.access(path, os.X_OK):
        pytest.exit(f"no executable minerva binary at {path} (cargo build --release --bin minerva)", returncode=2)
    return str(path)


def server_env() -> dict[str, str]:
    """The environment minus MINERVA_* settings that would change the server under test
    (an inherited MINERVA_API_KEY would make the keyless server demand a key); the models
    directory (MINERVA_HOME) and logging stay."""
    keep = {"MINERVA_HOME", "MINERVA_LOG"}
    return {k: v for k, v in os.environ.items() if not k.startswith("MINERVA_") or k in keep}


class Server:
    def __init__(self, name: str, log_path: Path, extra_args: list[str]):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "wb")
        args = [minerva_bin(), "serve", "--addr", "127.0.0.1:0", "--threads", "1", *extra_args]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, env=server_env())
        self.base_url = self._wait_ready()

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def _fail(self, why: str):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        pytest.fail(f"{self.name}: {why}\n--- server output ---\n{self.log_text()[-4000:]}", pytrace=False)

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        base = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail(f"exited with status {self.proc.returncode} before answering /health")
            if base is None:
                m = LISTENING.search(self.log_text())
                if m:
                    base = m.group(1).rstrip("/")
            if base is not None:
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                        if r.status == 200:
                            return base
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.1)
        self._fail(f"not healthy within {STARTUP_DEADLINE_S:.0f} s (address: {base})")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout=SHUTDOWN_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.log.close()
            pytest.fail(f"{self.name}: still running {SHUTDOWN_DEADLINE_S:.0f} s after SIGTERM\n{self.log_text()[-4000:]}", pytrace=False)
        self.log.close()
        assert status == 0, f"{self.name} exited with status {status} after SIGTERM\n{self.log_path.read_text(errors='replace')[-4000:]}"


def _server(tmp_path_factory, name: str, extra_args: list[str]):
    log_path = tmp_path_factory.mktemp(name) / "server.log"
    server = Server(name, log_path, extra_args)
    try:
        yield server.base_url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def minerva_url(tmp_path_factory):
    """Base URL (http://127.0.0.1:PORT) of a `minerva serve` without authentication."""
    yield from _server(tmp_path_factory, "minerva", [])


@pytest.fixture(scope="session")
def keyed_minerva_url(tmp_path_factory):
    """Base URL of a `minerva serve --api-key test-key`."""
    yield from _server(tmp_path_factory, "minerva-keyed", ["--api-key", API_KEY])


@pytest.fixture(scope="session")
def client(minerva_url):
    # No retries: a failing request must show up as the failure it is, not be retried.
    c = openai.OpenAI(base_url=f"{minerva_url}/v1", api_key="unused", max_retries=0, timeout=300)
    yield c
    c.close()
