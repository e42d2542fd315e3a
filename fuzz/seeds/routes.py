#!/usr/bin/env python3
"""Writes the seeds of the `routes` fuzz target into fuzz/corpus/routes/: one valid
request per route (the first byte is the route's index in the target's ROUTES), with the
features that reach the deeper parsers: tools, JSON schemas, grammars, logprobs, stops,
Ollama's options and Modelfiles. Standard library only.

    python3 fuzz/seeds/routes.py
"""
import json
import pathlib

M = "smollm2-135m-instruct"
chat = {"model": M, "messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hi"}]}
schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8},
                                           "age": {"type": "integer", "minimum": 0}},
          "required": ["name"], "additionalProperties": False}
tool = {"type": "function", "function": {"name": "weather", "description": "Weather of a city",
                                         "parameters": {"type": "object",
                                                        "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}
SEEDS = {
    "chat": (0, chat),
    "chat-stream-logprobs": (0, {**chat, "stream": True, "logprobs": True, "top_logprobs": 2,
                                 "stop": ["\n", "."], "temperature": 0.7, "top_p": 0.9, "seed": 3,
                                 "max_tokens": 4, "stream_options": {"include_usage": True}}),
    "chat-json-schema": (0, {**chat, "response_format": {"type": "json_schema", "json_schema": {
        "name": "person", "schema": schema, "strict": True}}}),
    "chat-json-object": (0, {**chat, "response_format": {"type": "json_object"}}),
    "chat-tools": (0, {**chat, "tools": [tool], "tool_choice": "required"}),
    "chat-tool-result": (0, {"model": M, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], "tools": [tool]}),
    "chat-parts": (0, {"model": M, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]}],
        "truncation": "drop_oldest", "keep_alive": "5m"}),
    "completion": (1, {"model": M, "prompt": "Once upon a time", "max_tokens": 4, "echo": True,
                       "logprobs": 1, "grammar": "root ::= \"yes\" | \"no\""}),
    "completion-tokens": (1, {"model": M, "prompt": [1, 2, 3], "n": 2, "best_of": 2}),
    "embeddings": (2, {"model": "all-minilm-l6-v2", "input": ["a", "b"], "encoding_format": "base64",
                       "dimensions": 8}),
    "embeddings-tokens": (2, {"model": "all-minilm-l6-v2", "input": [[101, 102]]}),
    "rerank": (3, {"model": "reranker", "query": "q", "documents": ["a", "b"], "top_n": 1}),
    "rerank-tei": (4, {"query": "q", "texts": ["a", "b"], "raw_scores": True}),
    "tokenize": (5, {"model": M, "prompt": "Hi", "add_special": True, "with_pieces": True}),
    "detokenize": (6, {"model": M, "tokens": [1, 2, 3]}),
    "explain": (7, {"model": M, "prompt": "Hi", "top_k": 3}),
    "feedback": (8, {"request_id": "r", "score": 1}),
    "pull": (9, {"model": "hf.co/owner/repo:Q4_K_M", "stream": False}),
    "load": (10, {"keep_alive": -1}),
    "preload": (11, {}),
    "weights": (12, {"weights": {"a": 1, "b": 3}}),
    "reload": (13, {}),
    "ollama-chat": (14, {"model": M, "messages": [{"role": "user", "content": "Hi"}], "stream": False,
                         "format": schema, "options": {"temperature": 0, "num_predict": 4, "num_ctx": 512,
                                                        "stop": ["x"], "seed": 1}, "tools": [tool]}),
    "ollama-generate": (15, {"model": M, "prompt": "Hi", "system": "s", "template": "{{ .Prompt }}",
                             "raw": True, "format": "json", "keep_alive": 0, "context": [1, 2]}),
    "ollama-embed": (16, {"model": "all-minilm-l6-v2", "input": ["a"], "truncate": False}),
    "ollama-embeddings": (17, {"model": "all-minilm-l6-v2", "prompt": "a"}),
    "ollama-show": (18, {"model": M, "verbose": True}),
    "ollama-create": (19, {"model": "mine", "from": M, "system": "Be brief.",
                           "parameters": {"temperature": 0.2, "stop": ["###"]},
                           "modelfile": "FROM smollm2-135m-instruct\nPARAMETER temperature 0.5\nSYSTEM hi\n"}),
    "ollama-copy": (20, {"source": M, "destination": "copy"}),
    "ollama-delete": (21, {"model": "copy"}),
    "ollama-pull": (22, {"model": "library/llama3:8b", "insecure": False, "stream": True}),
}


def main():
    out = pathlib.Path(__file__).resolve().parent.parent / "corpus" / "routes"
    out.mkdir(parents=True, exist_ok=True)
    for name, (route, body) in SEEDS.items():
        (out / name).write_bytes(bytes([route]) + json.dumps(body).encode())


if __name__ == "__main__":
    main()
