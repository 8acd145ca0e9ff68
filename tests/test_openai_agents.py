"""What agents need from the OpenAI surface, through `llama stack run` with the OpenAI SDK: tool
calls (forced and named, streamed and not), structured outputs, log-probabilities, streaming
completions, n > 1 streamed, unknown fields refused. Mostly on the tiny random model: constrained
decoding must make its output valid whatever the weights say. Tool calls on SmolLM2: the call's
JSON is constrained, but not the whitespace between its tokens, where a random model loops."""

import json

import jsonschema
import openai
import pytest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                       "required": ["city"], "additionalProperties": False},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a timezone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                       "required": ["zone"], "additionalProperties": False},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


def check_call(call, tools):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    assert call.type == "function" and call.id
    assert call.function.name in schemas
    jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])


def test_required_tool_choice_yields_a_call_valid_against_its_schema(openai_client, smol_model):
    response = openai_client.chat.completions.create(
        model=smol_model, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", max_tokens=60, temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        check_call(call, [WEATHER, TIME])


def test_a_named_function_is_the_one_called_streamed_in_openai_deltas(openai_client, smol_model):
    named = {"type": "function", "function": {"name": "get_time"}}
    plain = openai_client.chat.completions.create(
        model=smol_model, messages=ASK, tools=[WEATHER, TIME], tool_choice=named, max_tokens=60, temperature=0)
    (call,) = plain.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    check_call(call, [TIME])

    stream = openai_client.chat.completions.create(model=smol_model, messages=ASK, tools=[WEATHER, TIME],
                                                   tool_choice=named, max_tokens=60, temperature=0, stream=True)
    names, arguments, finish = [], "", None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function.name:
                    names.append(delta.function.name)
                arguments += delta.function.arguments or ""
            finish = choice.finish_reason or finish
    assert names == ["get_time"]
    assert json.loads(arguments) == json.loads(call.function.arguments), "streamed like the plain answer"
    assert finish in ("tool_calls", "stop")


def test_a_tool_result_in_the_history_is_rendered_and_answered(openai_client, tiny_model):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    response = openai_client.chat.completions.create(model=tiny_model, messages=history, tools=[WEATHER],
                                                     tool_choice="none", max_tokens=8, temperature=0)
    assert response.choices[0].message.tool_calls in (None, [])
    assert response.usage.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_response_format_is_valid_against_the_schema(openai_client, tiny_model, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    response = openai_client.chat.completions.create(
        model=tiny_model, messages=[{"role": "user", "content": "A person, as JSON."}], response_format=fmt,
        max_tokens=60, temperature=0, stream=stream)
    text = "".join(c.choices[0].delta.content or "" for c in response if c.choices) if stream \
        else response.choices[0].message.content
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_and_guided_choice(openai_client, tiny_model, smol_model):
    obj = openai_client.chat.completions.create(model=smol_model, messages=ASK, max_tokens=80, temperature=0,
                                                response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    choice = openai_client.chat.completions.create(model=tiny_model, messages=ASK, max_tokens=8, temperature=0,
                                                   extra_body={"structured_outputs": {"choice": ["yes", "no"]}})
    assert choice.choices[0].message.content in ("yes", "no")


@pytest.mark.parametrize("stream", [False, True])
def test_chat_logprobs_with_top_alternatives(openai_client, tiny_model, stream):
    response = openai_client.chat.completions.create(model=tiny_model, messages=ASK, max_tokens=5, temperature=0,
                                                     logprobs=True, top_logprobs=3, stream=stream)
    entries = [e for c in response if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []] \
        if stream \
        else response.choices[0].logprobs.content
    assert len(entries) == 5
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs)), "greedy: the top one"


def test_streaming_completion_and_its_logprobs(openai_client, tiny_model):
    # Llama Stack 0.7 types completions `logprobs` as a bool (OpenAI's is the integer k): true is k = 1,
    # and its completion choice carries them in the chat shape (README, "Agents")
    plain = openai_client.completions.create(model=tiny_model, prompt="one two three", max_tokens=6, temperature=0,
                                             logprobs=True)
    entries = plain.choices[0].logprobs.content  # not in the OpenAI SDK's completion type: plain dicts
    assert 0 < len(entries) <= 6
    assert all(isinstance(e["token"], str) and e["logprob"] <= 0 for e in entries)
    assert all(len(e["top_logprobs"]) == 1 and e["top_logprobs"][0]["logprob"] == pytest.approx(e["logprob"])
               for e in entries)
    chunks = list(openai_client.completions.create(model=tiny_model, prompt="one two three", max_tokens=6,
                                                   temperature=0, stream=True))
    assert len(chunks) > 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text


def test_n_choices_stream_with_their_index(openai_client, tiny_model):
    stream = openai_client.chat.completions.create(model=tiny_model, messages=ASK, max_tokens=6, temperature=1.0,
                                                   seed=3, n=3, stream=True)
    texts, finished = {}, set()
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.add(choice.index)
    assert finished == {0, 1, 2} and all(texts.values())


def test_logit_bias_and_penalties_reach_the_sampler(openai_client, tiny_model):
    def first_token(**extra):
        response = openai_client.chat.completions.create(
            model=tiny_model, messages=ASK, max_tokens=2, temperature=0, logprobs=True,
            extra_body={"return_tokens_as_token_ids": True}, **extra)
        return response.choices[0].logprobs.content[0].token  # "token_id:N"

    greedy = first_token()
    token_id = greedy.split(":")[1]
    assert first_token(logit_bias={token_id: -100}) != greedy, "a banned token is not sampled"
    with pytest.raises(openai.BadRequestError) as err:  # checked by vLLM's sampler, so not dropped on the way
        first_token(presence_penalty=5.0)
    assert "presence_penalty" in str(err.value)


@pytest.mark.parametrize("field", ["service_tier", "prompt_cache_key", "no_such_field"])
def test_a_field_the_server_does_not_know_is_a_400_naming_it(openai_client, tiny_model, field):
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model=tiny_model, messages=ASK, max_tokens=4,
                                              extra_body={field: "auto"})
    assert field in str(err.value)


@pytest.mark.parametrize("field, value", [("return_token_ids", True), ("prompt_logprobs", 2), ("prompt_logprobs", 0),
                                          ("return_prompt_text", True)])
def test_a_field_whose_answer_the_stack_cannot_carry_is_a_400_naming_it(openai_client, tiny_model, field, value):
    # vLLM would answer in response fields Llama Stack's OpenAI types drop on the way back
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(model=tiny_model, messages=ASK, max_tokens=4,
                                              extra_body={field: value})
    assert field in str(err.value)


def test_training_renders_a_tool_conversation_as_the_server_prompts_it(openai_client, smol_model, server, tmp_path):
    """The trainer and the engine render tools, calls and results with one template: the
    conversation's prefix before the trained answer is, token for token, the served prompt."""
    from transformers import AutoTokenizer

    from llama_stack_scalarlm.models.chat_template import tools_template
    from llama_stack_scalarlm.trainer.data import IGNORE_INDEX, load_examples

    path = server.state_dir / "models" / smol_model.split("/")[1]
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": history + [{"role": "assistant", "content": "Sunny."}],
                                "tools": [WEATHER, TIME]}) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(path)
    (example,) = load_examples(rows, tokenizer, "sft", 2048, tools_template(path))
    labels = example.sequences[0].labels
    trained = (labels != IGNORE_INDEX).nonzero()[0]
    assert tokenizer.decode(labels[trained]).startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": ')
    assert "sunny, 21 C" not in tokenizer.decode(labels[trained]), "a tool's result is not trained"

    served = openai_client.chat.completions.create(model=smol_model, messages=history, tools=[WEATHER, TIME],
                                                   max_tokens=1, temperature=0)
    # labels are shifted (position i predicts token i + 1): the final answer's first token sits one
    # past the start of the last run of trained positions, where the served prompt ends
    runs = [int(trained[i]) for i in range(1, len(trained)) if trained[i] != trained[i - 1] + 1]
    assert served.usage.prompt_tokens == runs[-1] + 1
