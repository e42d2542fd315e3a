"""Structured outputs through the official OpenAI client, unmodified: `response_format`
with a JSON schema (validated with the `jsonschema` package), `json_object`, and
Minerva's raw `grammar` (Lark) and `regex` extensions; a bad schema is a 400 naming the
field. Sampling is at temperature 0.8, so the outputs differ and the grammar, not luck,
keeps them valid.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

CHAT_MODEL = "smollm2-135m-instruct"
BASE_MODEL = "gemma-3-270m"

# Nested objects, an array of objects, enums, bounds, a pattern, required fields, no
# extra keys.
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
        "pets": {
            "type": "array",
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "kind": {"type": "string", "enum": ["cat", "dog", "fish"]},
                    "name": {"type": "string", "maxLength": 16},
                },
                "required": ["kind", "name"],
                "additionalProperties": False,
            },
        },
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "colour", "pets", "address"],
    "additionalProperties": False,
}

SUBJECTS = [
    "a baker from Lyon", "a retired pilot", "a child who loves fish", "a farmer with dogs",
    "a student in Oslo", "a painter", "a nurse who has a cat", "a sailor", "a chess player",
    "a librarian", "a gardener", "a mountain guide", "a taxi driver", "a violinist",
    "a beekeeper", "a postman", "a chef with three pets", "a teacher", "an astronaut",
    "a fisherman",
]


def person(client, subject: str) -> tuple[str, str]:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": f"Describe {subject} as a JSON record."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
        temperature=0.8,
        max_tokens=300,
    )
    choice = reply.choices[0]
    return choice.message.content, choice.finish_reason


def test_json_schema_output_always_validates_across_20_prompts(client):
    # Concurrent, so the constrained sequences share batches.
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda s: person(client, s), SUBJECTS))
    distinct = set()
    for (content, finish), subject in zip(answers, SUBJECTS):
        assert finish == "stop", f"{subject}: {finish}: {content!r}"
        record = json.loads(content)
        jsonschema.validate(record, PERSON)
        distinct.add(content)
    assert len(distinct) >= 15, f"sampling at 0.8 should vary the records: {distinct}"


def test_constrained_and_free_sequences_in_one_batch(client):
    def free(i: int) -> tuple[str, str]:
        reply = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "Tell me about rivers."}],
            temperature=0,
            max_tokens=24,
        )
        return reply.choices[0].message.content, reply.choices[0].finish_reason

    with ThreadPoolExecutor(max_workers=6) as pool:
        free_answers = [pool.submit(free, i) for i in range(3)]
        records = [pool.submit(person, client, s) for s in SUBJECTS[:3]]
        for record in records:
            content, finish = record.result()
            assert finish == "stop"
            jsonschema.validate(json.loads(content), PERSON)
        free_results = [f.result() for f in free_answers]
    # The free answers in the same batches are unconstrained prose that runs to its limit
    # (greedy, but batch mates may tip a near-tie, so they need not be identical).
    for text, finish in free_results:
        assert finish == "length", (text, finish)
        assert not text.lstrip().startswith("{"), text


def test_json_object_parses_as_an_object(client):
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Give me a JSON object with a key 'answer' whose value is yes."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(json.loads(choice.message.content), dict)


def test_a_lark_grammar_and_a_regex_bound_the_answer(client):
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Is the sky blue? Answer yes or no."}],
        temperature=0.8,
        max_tokens=20,
        extra_body={"grammar": 'start: "yes" | "no" | "maybe"'},
    )
    assert reply.choices[0].message.content in ("yes", "no", "maybe")
    assert reply.choices[0].finish_reason == "stop"

    reply = client.completions.create(
        model=BASE_MODEL,
        prompt="Call us at",
        temperature=0.8,
        max_tokens=20,
        extra_body={"regex": " [0-9]{3}-[0-9]{4}"},
    )
    assert re.fullmatch(r" [0-9]{3}-[0-9]{4}", reply.choices[0].text), reply.choices[0].text


@pytest.mark.parametrize(
    "response_format, param",
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}, "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
        ({"type": "xml"}, "response_format.type"),
    ],
)
def test_a_bad_schema_is_a_400_naming_the_field(client, response_format, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            response_format=response_format,
            max_tokens=4,
        )
    assert caught.value.status_code == 400
    assert caught.value.param == param, caught.value.body
