"""`minerva serve --config FILE` with aliases and a fallback chain, through the official
`openai` client, unmodified: the alias answers under its name with the model that served;
SIGHUP reads the file again (a new alias target is used at once; a bad file keeps the
routes in use, and the server says why in its log).

Run through scripts/test-openai-client.sh (virtualenv with the pinned clients, MINERVA_BIN).
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import openai
import pytest

from conftest import Server

CHAT_MODEL = "smollm2-135m-instruct"
BASE_MODEL = "gemma-3-270m"


@pytest.fixture()
def routed(tmp_path):
    config = tmp_path / "minerva.toml"
    config.write_text(f'[aliases]\nchat = "{CHAT_MODEL}"\n\n[routes.assistant]\nmodels = ["no-such-model-yet", "{CHAT_MODEL}"]\n')
    server = None
    try:
        server = Server("minerva-routed", tmp_path / "server.log", ["--config", str(config)])
        pytest.fail("a route to a model that does not exist was accepted at start")
    except pytest.fail.Exception as e:
        if "was accepted" in str(e):
            raise
        assert "line 5" in str(e) and "no-such-model-yet" in str(e), str(e)
    config.write_text(f'[aliases]\nchat = "{CHAT_MODEL}"\n\n[routes.assistant]\nmodels = ["{BASE_MODEL}", "{CHAT_MODEL}"]\n')
    server = Server("minerva-routed", tmp_path / "server2.log", ["--config", str(config)])
    try:
        yield server, config
    finally:
        server.stop()


def completion_model(base: str, model: str) -> str:
    c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = c.completions.create(model=model, prompt="Hello", max_tokens=2)
    return reply.model


def test_an_alias_answers_and_sighup_swaps_the_routes(routed):
    server, config = routed
    base = server.base_url
    c = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=300)
    raw = c.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0
    )
    assert raw.headers["x-minerva-route"] == f"chat; model={CHAT_MODEL}"
    assert raw.parse().model == CHAT_MODEL
    ids = {m.id for m in c.models.list().data}
    assert {"chat", "assistant", CHAT_MODEL} <= ids

    config.write_text(f'[aliases]\nchat = "{BASE_MODEL}"\n')
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while completion_model(base, "chat") != BASE_MODEL:
        assert time.monotonic() < deadline, "SIGHUP did not swap the routes"
        time.sleep(0.1)

    config.write_text('[aliases]\nchat = "nothing-here"\n')
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "the routes in use stay" not in server.log_text():
        assert time.monotonic() < deadline, "the bad file was not reported"
        time.sleep(0.1)
    assert completion_model(base, "chat") == BASE_MODEL


def test_a_second_minerva_serves_through_the_first_and_a_killed_one_is_passed_over(tmp_path):
    """Two `minerva serve` processes: `far` is a remote backend of `front`. A stream
    through the hop carries the far server's tokens as they come; once `far` is killed,
    the chain passes over it to a local model and says so."""
    far = Server("minerva-far", tmp_path / "far.log", [])
    front = None
    try:
        config = tmp_path / "front.toml"
        config.write_text(
            f'[backends.far]\nurls = ["{far.base_url}/v1"]\nmodel = "{CHAT_MODEL}"\n'
            "failures = 1\ncooldown_secs = 3600\nhealth_interval_secs = 3600\n\n"
            f'[routes.resilient]\nmodels = ["far", "{CHAT_MODEL}"]\n'
        )
        front = Server("minerva-front", tmp_path / "front.log", ["--config", str(config)])
        ask = dict(messages=[{"role": "user", "content": "Name three colours."}], max_tokens=12, temperature=0)
        direct = openai.OpenAI(base_url=f"{far.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
        c = openai.OpenAI(base_url=f"{front.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
        expected = direct.chat.completions.create(model=CHAT_MODEL, **ask).choices[0].message.content

        chunks = list(c.chat.completions.create(model="far", stream=True, **ask))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == expected, "greedy: the same answer through the hop"
        assert sum(1 for ch in chunks if ch.choices and ch.choices[0].delta.content) > 1, "one token per event"
        assert all(ch.model == CHAT_MODEL for ch in chunks)
        listed = json.load(urllib.request.urlopen(f"{front.base_url}/v1/models"))["data"]
        remote = next(m for m in listed if m["id"] == "far")
        assert remote["owned_by"] == "minerva-remote"
        assert remote["remote"]["replicas"][0]["circuit"] == "closed"
        loaded = json.load(urllib.request.urlopen(f"{front.base_url}/v1/models/loaded"))
        assert "far" not in {m["id"] for m in loaded["data"]}, "a remote model takes no local memory"

        far.proc.kill()
        far.proc.wait()
        for _ in range(2):  # the failure, then the open circuit
            raw = c.chat.completions.with_raw_response.create(model="resilient", **ask)
            assert raw.headers["x-minerva-route"] == f"resilient; model={CHAT_MODEL}; skipped=far:upstream"
            assert raw.parse().choices[0].message.content == expected
        listed = json.load(urllib.request.urlopen(f"{front.base_url}/v1/models"))["data"]
        assert next(m for m in listed if m["id"] == "far")["remote"]["replicas"][0]["circuit"] == "open"
    finally:
        if front is not None:
            front.stop()
        if far.proc.poll() is None:
            far.stop()
        else:
            far.log.close()
