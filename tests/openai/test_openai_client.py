"""The official OpenAI Python client, unmodified, against `minerva serve` on the real models.

Run through scripts/test-openai-client.sh (virtualenv with the pinned client, MINERVA_BIN).
"""

from __future__ import annotations

import base64
import json
import math
import os
import struct
import subprocess

import openai
import pytest

from conftest import API_KEY, minerva_bin, server_env

CHAT_MODEL = "smollm2-135m-instruct"
BASE_MODEL = "gemma-3-270m"
EMBED_MODEL = "all-minilm-l6-v2"
EMBED_DIMS = 384
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]
EMBED_TEXT = "The quick brown fox jumps over the lazy dog."


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def assert_usage(usage, completion_tokens: int | None = None):
    assert usage is not None, "no usage in the response"
    assert usage.prompt_tokens > 0
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if completion_tokens is not None:
        assert usage.completion_tokens == completion_tokens


def cli_generate(model: str, prompt: str, max_tokens: int, chat: bool) -> dict:
    """Greedy `minerva generate --json`: the CLI's answer for the same request."""
    args = [minerva_bin(), "generate", "-m", model, "-p", prompt, "--temperature", "0", "-n", str(max_tokens)]
    args += ["--threads", "1", "--json"] + (["--chat"] if chat else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True, env=server_env(), timeout=120)
    return json.loads(out.stdout)


# --- chat ---------------------------------------------------------------------------------


def test_chat_plain(client):
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=16, logprobs=True
    )
    assert r.object == "chat.completion"
    assert r.model == CHAT_MODEL
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip(), "empty content"
    assert choice.finish_reason in {"stop", "length"}
    # One logprobs entry per generated token: the count the usage must report.
    generated = len(choice.logprobs.content)
    assert generated > 0
    assert_usage(r.usage, completion_tokens=generated)
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 16
    else:
        assert r.usage.completion_tokens <= 16
    # Greedy: the same answer, prompt and token counts as `minerva generate --chat`.
    cli = cli_generate(CHAT_MODEL, MESSAGES[0]["content"], 16, chat=True)
    assert choice.message.content == cli["text"]
    assert choice.finish_reason == cli["finish_reason"]
    assert r.usage.prompt_tokens == len(cli["prompt_tokens"])
    assert r.usage.completion_tokens == len(cli["tokens"])


def test_chat_usage_counts_max_tokens(client):
    # At max_tokens=4 a sentence-long answer stops for length after exactly 4 tokens.
    r = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_tokens=4,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content
    assert_usage(r.usage, completion_tokens=4)


def test_chat_streaming_matches_non_streaming(client):
    params = dict(model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=16)
    whole = client.chat.completions.create(**params)
    stream = client.chat.completions.create(**params, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks, "empty stream"
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.id == chunks[0].id
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    # Usage comes once, in the last chunk, which has no choices.
    last = chunks[-1]
    assert last.choices == []
    assert_usage(last.usage)
    assert all(c.usage is None for c in chunks[:-1])
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        whole.usage.prompt_tokens,
        whole.usage.completion_tokens,
        whole.usage.total_tokens,
    )


def test_chat_streaming_without_usage(client):
    chunks = list(
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=4, stream=True)
    )
    assert chunks
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_chat_n_and_seed(client):
    params = dict(model=CHAT_MODEL, messages=MESSAGES, temperature=0.8, max_tokens=8, seed=42)
    r = client.chat.completions.create(**params, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens > 0
    # The same seed gives the same choice again (choice i samples with seed + i).
    again = client.chat.completions.create(**params)
    assert again.choices[0].message.content == r.choices[0].message.content


def test_chat_stop_sequence(client):
    whole = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=16)
    content = whole.choices[0].message.content
    words = content.split()
    assert len(words) >= 2, content
    stop = words[1]
    r = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=16, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].message.content
    assert content.startswith(r.choices[0].message.content)


def test_chat_logprobs_top3(client):
    r = client.chat.completions.create(
        model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    choice = r.choices[0]
    content = choice.logprobs.content
    assert content, "no logprobs"
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3
        alt = [t.logprob for t in entry.top_logprobs]
        assert alt == sorted(alt, reverse=True)
        # Greedy decoding: the chosen token is the most likely one.
        assert entry.token == entry.top_logprobs[0].token
        assert math.isclose(entry.logprob, alt[0], abs_tol=1e-4)
    assert "".join(e.token for e in content) == choice.message.content


# --- completions --------------------------------------------------------------------------


def test_completions(client):
    r = client.completions.create(model=BASE_MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
    assert r.object == "text_completion"
    assert r.model == BASE_MODEL
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.text
    assert choice.finish_reason in {"stop", "length"}
    assert_usage(r.usage)
    assert r.usage.completion_tokens <= 8
    # Greedy: the same text and token counts as `minerva generate` on the raw prompt (the
    # 270M base model does not know the answer is Paris; the check is fidelity, not facts).
    cli = cli_generate(BASE_MODEL, "The capital of France is", 8, chat=False)
    assert choice.text == cli["text"]
    assert choice.finish_reason == cli["finish_reason"]
    assert r.usage.prompt_tokens == len(cli["prompt_tokens"])
    assert r.usage.completion_tokens == len(cli["tokens"])


def test_completions_two_prompts(client):
    prompts = ["The capital of France is", "One, two, three,"]
    r = client.completions.create(model=BASE_MODEL, prompt=prompts, temperature=0, max_tokens=8)
    assert sorted(c.index for c in r.choices) == [0, 1]
    by_index = {c.index: c.text for c in r.choices}
    assert all(by_index.values())
    # Each choice is what that prompt gives alone.
    for i, prompt in enumerate(prompts):
        alone = client.completions.create(model=BASE_MODEL, prompt=prompt, temperature=0, max_tokens=8)
        assert by_index[i] == alone.choices[0].text
    assert_usage(r.usage)


def test_completions_streaming(client):
    params = dict(model=BASE_MODEL, prompt="The capital of France is", temperature=0, max_tokens=8)
    whole = client.completions.create(**params)
    chunks = list(client.completions.create(**params, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text


# --- embeddings ---------------------------------------------------------------------------


def cli_embedding(text: str) -> list[float]:
    out = subprocess.run(
        [minerva_bin(), "embed", "-m", EMBED_MODEL, "--text", text, "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=120,
    )
    return json.loads(out.stdout)["embeddings"][0]


def test_embeddings_float_base64_and_cli_agree(client):
    as_float = client.embeddings.create(model=EMBED_MODEL, input=EMBED_TEXT, encoding_format="float")
    assert as_float.object == "list"
    assert len(as_float.data) == 1
    vec = as_float.data[0].embedding
    assert len(vec) == EMBED_DIMS
    assert all(isinstance(x, float) for x in vec)
    assert as_float.usage.prompt_tokens > 0

    # Without encoding_format the client asks for base64 and decodes it itself.
    decoded_by_client = client.embeddings.create(model=EMBED_MODEL, input=EMBED_TEXT).data[0].embedding
    assert len(decoded_by_client) == EMBED_DIMS
    assert max(abs(a - b) for a, b in zip(vec, decoded_by_client)) <= 1e-6

    # Asked for explicitly, base64 comes back as the string: little-endian float32s.
    raw = client.embeddings.create(model=EMBED_MODEL, input=EMBED_TEXT, encoding_format="base64").data[0].embedding
    assert isinstance(raw, str)
    packed = base64.b64decode(raw)
    assert len(packed) == 4 * EMBED_DIMS
    decoded = list(struct.unpack(f"<{EMBED_DIMS}f", packed))
    assert max(abs(a - b) for a, b in zip(vec, decoded)) <= 1e-6

    cli = cli_embedding(EMBED_TEXT)
    assert len(cli) == EMBED_DIMS
    assert cosine(vec, cli) >= 0.99999


def test_embeddings_batch(client):
    texts = ["a sentence about cats", "a sentence about dogs", EMBED_TEXT]
    r = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2]
    single = client.embeddings.create(model=EMBED_MODEL, input=EMBED_TEXT, encoding_format="float").data[0].embedding
    assert cosine(r.data[2].embedding, single) >= 0.99999
    assert cosine(r.data[0].embedding, r.data[1].embedding) < 0.99


# --- models -------------------------------------------------------------------------------


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    for wanted in (CHAT_MODEL, BASE_MODEL, EMBED_MODEL):
        assert wanted in ids, ids
    for wanted in (CHAT_MODEL, BASE_MODEL, EMBED_MODEL):
        m = client.models.retrieve(wanted)
        assert m.id == wanted
        assert m.object == "model"


# --- errors -------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=4)
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize(
    "bad, param",
    [
        ({"top_p": 2}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs: true
    ],
    ids=["top_p=2", "max_tokens=0", "temperature=-1", "top_logprobs-without-logprobs"],
)
def test_invalid_parameter_is_bad_request(client, bad, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, **bad)
    assert e.value.status_code == 400
    assert e.value.param == param, e.value.body


def test_completions_invalid_parameter_is_bad_request(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=BASE_MODEL, prompt="x", top_p=2)


# --- authentication -----------------------------------------------------------------------


def test_wrong_api_key_is_rejected(keyed_minerva_url):
    with openai.OpenAI(base_url=f"{keyed_minerva_url}/v1", api_key="wrong-key", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.models.list()
        assert e.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            wrong.embeddings.create(model=EMBED_MODEL, input="x")


def test_right_api_key_is_accepted(keyed_minerva_url):
    with openai.OpenAI(base_url=f"{keyed_minerva_url}/v1", api_key=API_KEY, max_retries=0, timeout=300) as right:
        assert EMBED_MODEL in [m.id for m in right.models.list()]
        r = right.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, temperature=0, max_tokens=4)
        assert r.choices[0].message.content
        e = right.embeddings.create(model=EMBED_MODEL, input="x", encoding_format="float")
        assert len(e.data[0].embedding) == EMBED_DIMS
