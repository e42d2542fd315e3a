"""Tool calls through the official OpenAI client, unmodified: the whole flow (a call, the
tool's result sent back, the final answer), `required` and a named function (the call is
grammar-constrained, so even a 135M model's arguments validate against the function's
parameters), streamed tool-call deltas, and bad tool requests as 400s naming the field.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

CHAT_MODEL = "smollm2-135m-instruct"

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 32},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 32}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, CLOCK]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def test_call_then_result_then_final_answer(client):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=messages,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0.8,
        max_tokens=100,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS["get_weather"])

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})})
    final = client.chat.completions.create(
        model=CHAT_MODEL, messages=messages, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=40
    )
    answer = final.choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content and answer.message.content.strip()
    assert answer.finish_reason in ("stop", "length")


def test_required_always_returns_a_valid_call_of_an_offered_tool(client):
    for question in ["What time is it in Tokyo?", "Is it raining in Oslo?", "Tell me a joke.", "Hello!"]:
        reply = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": question}],
            tools=TOOLS,
            tool_choice="required",
            temperature=0.8,
            max_tokens=100,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", (question, choice)
        (call,) = choice.message.tool_calls
        assert call.function.name in SCHEMAS
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_a_streamed_tool_call_assembles_from_its_deltas(client):
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "What time is it in Lima?"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=60,
        stream=True,
        stream_options={"include_usage": True},
    )
    name, arguments, finish, usage = "", "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += delta.function.name or ""
                arguments += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert name == "get_time"
    jsonschema.validate(json.loads(arguments), SCHEMAS["get_time"])
    assert finish == "tool_calls"
    assert usage is not None and usage.completion_tokens > 0


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, **extra
        )
    assert caught.value.param == param, caught.value.body
