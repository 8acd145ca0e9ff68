"""OpenAI SDK against `llama stack run`: chat, streaming, completions, sampling, usage."""

import pytest

from llama_stack_scalarlm.client import ScalarLMClient

from .conftest import DEFAULT_MAX_TOKENS

MESSAGES = [{"role": "user", "content": "Name a color and a number."}]


def chat(client, model, **kwargs):
    kwargs.setdefault("messages", MESSAGES)
    return client.chat.completions.create(model=model, **kwargs)


def test_chat_completion_has_text_and_real_usage(openai_client, tiny_model, tiny_tokenizer):
    response = chat(openai_client, tiny_model, max_tokens=12, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    rendered = tiny_tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert response.usage.prompt_tokens == len(tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == 12
    assert response.usage.completion_tokens <= 12
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_greedy_is_deterministic_and_streaming_matches(openai_client, tiny_model):
    first = chat(openai_client, tiny_model, max_tokens=16, temperature=0).choices[0].message.content
    second = chat(openai_client, tiny_model, max_tokens=16, temperature=0).choices[0].message.content
    assert first == second
    stream = chat(openai_client, tiny_model, max_tokens=16, temperature=0, stream=True,
                  stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == first
    assert len([c for c in chunks if c.choices]) > 1, "streaming should deliver more than one chunk"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 16


def test_seed_makes_sampling_reproducible(openai_client, tiny_model):
    def sample(seed):
        return chat(openai_client, tiny_model, max_tokens=16, temperature=1.0, seed=seed).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_n_choices_and_max_tokens(openai_client, tiny_model):
    response = chat(openai_client, tiny_model, max_tokens=5, temperature=1.0, n=3)
    assert sorted(c.index for c in response.choices) == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in response.choices)
    lengths = [5 if c.finish_reason == "length" else None for c in response.choices]
    assert 3 <= response.usage.completion_tokens <= 15
    if all(lengths):
        assert response.usage.completion_tokens == 15


def test_a_chat_without_a_bound_gets_the_servers_and_a_bound_of_its_own_is_kept(server, openai_client, tiny_model):
    """``ignore_eos`` (vLLM's) makes each reply run to its bound, so the bound is what is measured."""
    unbounded = chat(openai_client, tiny_model, temperature=0, extra_body={"ignore_eos": True})
    assert unbounded.usage.completion_tokens == DEFAULT_MAX_TOKENS
    assert unbounded.choices[0].finish_reason == "length"
    own = chat(openai_client, tiny_model, temperature=0, max_completion_tokens=DEFAULT_MAX_TOKENS + 8,
               extra_body={"ignore_eos": True})
    assert own.usage.completion_tokens == DEFAULT_MAX_TOKENS + 8, "a request's own bound is never lowered"
    # the bulk route too
    (bulk,) = ScalarLMClient(server.url, api_key=server.token).generate(tiny_model, ["the"], temperature=0,
                                                                        ignore_eos=True)
    assert bulk.choices[0].completion_tokens == DEFAULT_MAX_TOKENS


def test_stop_string_cuts_output(openai_client, tiny_model):
    full = chat(openai_client, tiny_model, max_tokens=24, temperature=1.0, seed=3).choices[0].message.content
    visible = [i for i in range(1, len(full) - 1) if full[i].strip()]
    assert visible, f"need a visible character to stop at, got {full!r}"
    stop = full[visible[len(visible) // 2]]
    cut = chat(openai_client, tiny_model, max_tokens=24, temperature=1.0, seed=3, stop=[stop]).choices[0]
    assert cut.finish_reason == "stop"
    assert stop not in cut.message.content
    assert full.startswith(cut.message.content)


def test_completions_endpoint(openai_client, tiny_model):
    response = openai_client.completions.create(model=tiny_model, prompt="the capital city", max_tokens=6,
                                                temperature=0)
    assert response.choices[0].text
    again = openai_client.completions.create(model=tiny_model, prompt="the capital city", max_tokens=6,
                                             temperature=0)
    assert again.choices[0].text == response.choices[0].text


@pytest.mark.parametrize("bad, field", [
    ({"max_tokens": 5000}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": 50}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"n": 1000}, "n"),
    ({"n": 2, "temperature": 0}, "n"),
    ({"messages": [{"role": "user"}]}, "content"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 2_000_000}]}, "messages"),
    ({"tools": []}, "tools"),  # refused by vLLM's model validator, which raises its own error type
])
def test_bad_input_is_a_400_naming_the_field(openai_client, tiny_model, bad, field):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        chat(openai_client, tiny_model, **{"max_tokens": 4, **bad})
    assert field in str(err.value)


def test_an_empty_completion_prompt_is_a_400_naming_it(openai_client, tiny_model):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        openai_client.completions.create(model=tiny_model, prompt="", max_tokens=4)
    assert "prompt" in str(err.value)


def test_prompt_longer_than_context_is_a_400(openai_client, tiny_model):
    import openai

    long = " ".join(["zebra"] * 3000)
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            chat(openai_client, tiny_model, messages=[{"role": "user", "content": long}], stream=stream,
                 max_tokens=4)
        assert "messages" in str(err.value)


def test_unknown_model_is_a_404_naming_it(openai_client):
    import openai

    with pytest.raises(openai.NotFoundError) as err:
        chat(openai_client, "scalarlm/no-such-model", max_tokens=4)
    assert "no-such-model" in str(err.value)
