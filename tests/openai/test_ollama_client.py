"""The official `ollama` Python client (PyPI `ollama`), unmodified, against `minerva serve`
on the real models: Ollama's API beside OpenAI's on the same port (NDJSON streams, Ollama's
options, names with tags, errors as {"error": ...}).

Run through scripts/test-openai-client.sh (virtualenv with the pinned clients, MINERVA_BIN).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import jsonschema
import ollama
import pytest

CHAT_MODEL = "smollm2-135m-instruct"
BASE_MODEL = "gemma-3-270m"
EMBED_MODEL = "all-minilm-l6-v2"
GREEDY = {"temperature": 0, "num_predict": 24}
MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def oc(minerva_url):
    return ollama.Client(host=minerva_url, timeout=300)


def test_list_shows_every_model_with_a_tag_and_details(oc):
    models = {m.model: m for m in oc.list().models}
    for name in (CHAT_MODEL, BASE_MODEL, EMBED_MODEL):
        assert f"{name}:latest" in models, sorted(models)
    smol = models[f"{CHAT_MODEL}:latest"]
    assert smol.size > 50_000_000
    assert smol.details.format == "gguf"
    assert smol.details.family == "llama"
    assert smol.details.quantization_level == "Q4_1"
    assert smol.details.parameter_size == "135M"
    assert smol.modified_at is not None
    assert models[f"{EMBED_MODEL}:latest"].details.format == "sentence-transformers"


def test_chat_streaming_matches_non_streaming(oc):
    whole = oc.chat(model=CHAT_MODEL, messages=MESSAGES, options=GREEDY, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.prompt_eval_count > 5 and 0 < whole.eval_count <= 24
    assert whole.total_duration >= whole.eval_duration > 0

    chunks = list(oc.chat(model=f"{CHAT_MODEL}:latest", messages=MESSAGES, options=GREEDY, stream=True))
    assert len(chunks) > 2, "a stream of one line is not a stream"
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert chunks[-1].eval_count == whole.eval_count
    assert "".join(c.message.content for c in chunks) == whole.message.content


def test_chat_num_predict_and_stop(oc):
    short = oc.chat(model=CHAT_MODEL, messages=MESSAGES, options={"temperature": 0, "num_predict": 3})
    assert short.eval_count == 3 and short.done_reason == "length"
    text = oc.chat(model=CHAT_MODEL, messages=MESSAGES, options=GREEDY).message.content
    word = text.split()[1]
    stopped = oc.chat(model=CHAT_MODEL, messages=MESSAGES, options={**GREEDY, "stop": [word]})
    assert word not in stopped.message.content
    assert text.startswith(stopped.message.content)


def test_chat_seeded_sampling_repeats(oc):
    options = {"temperature": 1.0, "seed": 7, "num_predict": 24}
    a = oc.chat(model=CHAT_MODEL, messages=MESSAGES, options=options).message.content
    b = oc.chat(model=CHAT_MODEL, messages=MESSAGES, options=options).message.content
    assert a == b


def test_chat_format_json_and_schema(oc):
    reply = oc.chat(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object with a key 'answer' whose value is yes."}],
        format="json",
        options={"temperature": 0, "num_predict": 200},
    )
    assert reply.done_reason == "stop", reply
    assert isinstance(json.loads(reply.message.content), dict)
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "colours": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
            "age": {"type": "integer", "minimum": 0, "maximum": 30},
        },
        "required": ["name", "colours", "age"],
        "additionalProperties": False,
    }
    reply = oc.chat(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Invent a pet."}],
        format=schema,
        options={"temperature": 0.8, "num_predict": 128},
    )
    jsonschema.validate(json.loads(reply.message.content), schema)


def test_chat_takes_tools_and_tool_results_back(oc):
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
    ]
    reply = oc.chat(model=CHAT_MODEL, messages=messages, tools=[weather], options=GREEDY)
    assert reply.done
    assert reply.message.content or reply.message.tool_calls
    for call in reply.message.tool_calls or []:
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments, dict)


def test_generate_and_continue_from_context(oc):
    first = oc.generate(model=CHAT_MODEL, prompt="What is the capital of France?", options=GREEDY)
    assert first.done and first.response
    assert len(first.context) == first.prompt_eval_count + first.eval_count
    second = oc.generate(model=CHAT_MODEL, prompt="And of Italy?", context=first.context, options=GREEDY)
    assert second.response
    assert second.prompt_eval_count > len(first.context)
    assert second.context[: len(first.context)] == first.context

    raw = oc.generate(model=BASE_MODEL, prompt="The capital of France is", raw=True, options=GREEDY)
    streamed = list(oc.generate(model=BASE_MODEL, prompt="The capital of France is", raw=True, options=GREEDY, stream=True))
    assert len(streamed) > 2 and streamed[-1].done
    assert "".join(c.response for c in streamed) == raw.response


def test_embed_and_the_older_embeddings(oc):
    texts = ["The quick brown fox.", "A lazy dog sleeps."]
    reply = oc.embed(model=EMBED_MODEL, input=texts)
    assert len(reply.embeddings) == 2 and all(len(v) == 384 for v in reply.embeddings)
    assert reply.prompt_eval_count > 4
    old = oc.embeddings(model=EMBED_MODEL, prompt=texts[0])
    assert len(old.embedding) == 384
    assert max(abs(a - b) for a, b in zip(old.embedding, reply.embeddings[0])) < 1e-6
    assert math.isclose(sum(x * x for x in reply.embeddings[1]), 1.0, rel_tol=1e-4)


def test_show_gives_template_details_and_capabilities(oc):
    smol = oc.show(CHAT_MODEL)
    assert "im_start" in smol.template
    assert "completion" in smol.capabilities
    assert smol.modelinfo["general.architecture"] == "llama"
    assert smol.modelinfo["llama.context_length"] == 8192
    assert smol.details.quantization_level == "Q4_1"
    assert "embedding" in oc.show(f"{EMBED_MODEL}:latest").capabilities


def test_ps_lists_loaded_models_and_keep_alive_0_unloads(oc):
    oc.generate(model=BASE_MODEL, prompt="Hello", options={"num_predict": 2})
    loaded = {m.model: m for m in oc.ps().models}
    assert f"{BASE_MODEL}:latest" in loaded
    assert loaded[f"{BASE_MODEL}:latest"].size > 100_000_000
    # A model that has been loaded is in the registry, with its SHA-256.
    digest = loaded[f"{BASE_MODEL}:latest"].digest
    assert len(digest) == 64 and int(digest, 16) >= 0
    unloaded = oc.generate(model=BASE_MODEL, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert f"{BASE_MODEL}:latest" not in {m.model for m in oc.ps().models}
    # An empty prompt loads it again.
    assert oc.generate(model=BASE_MODEL, prompt="").done_reason == "load"
    assert f"{BASE_MODEL}:latest" in {m.model for m in oc.ps().models}


def test_errors_come_back_as_ollama_errors(oc):
    with pytest.raises(ollama.ResponseError) as e:
        oc.chat(model="no-such-model", messages=MESSAGES)
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        oc.embed(model=CHAT_MODEL, input="hello")
    assert e.value.status_code == 400 and "embedding model" in e.value.error


def test_a_bad_format_is_a_400_in_ollamas_error_shape(minerva_url):
    # The client itself refuses such a format, so this one goes over plain HTTP.
    body = json.dumps({"model": CHAT_MODEL, "messages": MESSAGES, "format": "yaml", "stream": False}).encode()
    request = urllib.request.Request(f"{minerva_url}/api/chat", data=body, headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request)
    assert e.value.code == 400
    error = json.load(e.value)["error"]
    assert isinstance(error, str) and "format" in error


def test_version_and_root_answer_like_ollama(minerva_url):
    with urllib.request.urlopen(f"{minerva_url}/api/version") as r:
        assert json.load(r)["version"].count(".") == 2
    with urllib.request.urlopen(f"{minerva_url}/") as r:
        assert b"running" in r.read()
