"""ScalarLM's bulk path: thousands of prompts in one call, ids back at once, results by polling."""

import httpx
import pytest

from llama_stack_scalarlm.client import ScalarLMClient
from llama_stack_scalarlm.cli import main as scalarlm_cli


def test_thousand_prompts_round_trip(server, tiny_model, openai_client):
    client = ScalarLMClient(server.url, api_key=server.token)
    prompts = [f"item {i} of the list" for i in range(1000)]
    seen = []
    results = client.generate(tiny_model, prompts, progress=lambda d, t: seen.append(d), max_tokens=6,
                              temperature=0)
    assert len(results) == 1000
    assert all(r.error is None and 1 <= r.choices[0].completion_tokens <= 6 for r in results)
    assert seen[-1] == 1000 and seen == sorted(seen)
    # Results are in prompt order: greedy bulk results equal single OpenAI completions of the same prompt.
    for i in (0, 517, 999):
        single = openai_client.completions.create(model=tiny_model, prompt=prompts[i], max_tokens=6, temperature=0)
        assert results[i].choices[0].text == single.choices[0].text


def test_bulk_samples_with_their_logprobs_match_the_openai_route(server, tiny_model, openai_client):
    client = ScalarLMClient(server.url, api_key=server.token)
    (greedy,) = client.generate(tiny_model, ["one two three"], max_tokens=5, temperature=0, logprobs=2)
    lp = greedy.choices[0].logprobs
    assert len(lp.token_ids) == len(lp.logprobs) == len(lp.top) == greedy.choices[0].completion_tokens
    assert all(len(top) == 2 and top[0][0] == t and top[0][1] == pytest.approx(v, abs=1e-4)
               for t, v, top in zip(lp.token_ids, lp.logprobs, lp.top)), "greedy: each token is its top one"
    (sampled,) = client.generate(tiny_model, ["one two three"], max_tokens=4, temperature=1.0, seed=1, n=4,
                                 logprobs=0)
    assert [c.index for c in sampled.choices] == [0, 1, 2, 3]
    assert all(len(c.logprobs.token_ids) == c.completion_tokens and c.logprobs.top == [[]] * c.completion_tokens
               for c in sampled.choices)


def test_seeded_samples_of_more_prompt_tokens_than_one_engine_step_holds(server, tiny_model):
    """Seeded requests whose prompts (~6,000 tokens together) do not fit one engine step (2,048):
    with chunked prefill, vLLM rewinds a part-prefilled request's seeded generator by an offset a
    CPU generator does not have, and the engine died on every seeded batch this large."""
    client = ScalarLMClient(server.url, api_key=server.token)
    prompts = [" ".join(f"word{i}-{j}" for j in range(60)) for i in range(24)]
    first, again = (client.generate(tiny_model, prompts, max_tokens=4, temperature=1.0, seed=7, n=2)
                    for _ in range(2))
    assert all(r.error is None and len(r.choices) == 2 for r in first), [r.error for r in first if r.error][:1]
    assert [[c.text for c in r.choices] for r in first] == [[c.text for c in r.choices] for r in again]


def test_ids_come_back_before_results(server, tiny_model):
    client = ScalarLMClient(server.url, api_key=server.token)
    ids = client.submit(tiny_model, ["a b c"] * 50, max_tokens=4)
    assert len(set(ids)) == 50
    results = {}
    while len(results) < 50:
        results.update(client.poll(ids))
    assert client.poll(ids) == {}, "what a poll returned is acknowledged by the next one"


def test_long_poll_answers_when_a_result_is_in(server, tiny_model):
    client = ScalarLMClient(server.url, api_key=server.token)
    ids = client.submit(tiny_model, ["x y z"] * 3, max_tokens=4)
    first = client.poll(ids, wait_s=60)  # held on the server until something finished, not empty
    assert first and set(first) <= set(ids)
    rest = [i for i in ids if i not in first]
    while rest:
        done = client.poll(rest, wait_s=60)
        rest = [i for i in rest if i not in done]
    assert client.poll(ids, wait_s=60) == {}  # acknowledged already: answered at once, nothing twice


def test_chat_prompts_in_bulk(server, tiny_model):
    client = ScalarLMClient(server.url, api_key=server.token)
    (result,) = client.generate(tiny_model, [[{"role": "user", "content": "hi"}]], max_tokens=3)
    assert result.error is None and result.prompt_tokens > 3  # the chat template wrapped the message


@pytest.mark.parametrize("body, status, field", [
    ({"model": "tiny-llama", "prompts": []}, 400, "prompts"),
    ({"model": "tiny-llama", "prompts": ["a"], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny-llama", "prompts": ["a"], "temperature": 9}, 400, "temperature"),
    ({"model": "tiny-llama", "prompts": [[{"role": "robot", "content": "x"}]]}, 400, "role"),
    ({"model": "nope", "prompts": ["a"]}, 404, "nope"),
    ({"prompts": ["a"]}, 400, "model"),
    # what the bulk route does not take is refused, never dropped (OpenAI sampling fields included)
    ({"model": "tiny-llama", "prompts": ["a"], "presence_penalty": 1.0}, 400, "presence_penalty"),
    ({"model": "tiny-llama", "prompts": [[{"role": "user", "content": "x", "name": "ann"}]]}, 400, "name"),
])
def test_bulk_bad_input(server, body, status, field):
    response = httpx.post(f"{server.url}/v1/scalarlm/generate", json=body, headers=server.headers)
    assert response.status_code == status
    assert field in response.text


@pytest.mark.parametrize("route, body, field", [
    ("generate/results", {"request_ids": ["1-" + "a" * 24], "wait": 5}, "wait"),
    ("generate/cancel", {"request_ids": ["1-" + "a" * 24], "all": True}, "all"),
    ("uploads", {"size": 3, "name": "rows.jsonl"}, "name"),
])
def test_unknown_fields_of_polls_cancels_and_uploads_are_refused(server, route, body, field):
    response = httpx.post(f"{server.url}/v1/scalarlm/{route}", json=body, headers=server.headers)
    assert response.status_code == 400 and field in response.text, response.text


def test_cli_generate(server, tiny_model, capsys):
    assert scalarlm_cli(["--url", server.url, "--api-key", server.token, "generate", "--model", tiny_model, "--max-tokens", "4", "--quiet",
                         "one", "two"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and '"prompt": "one"' in lines[0] and '"completion"' in lines[0]


@pytest.mark.parametrize("line", ['{"prompt": "one", "max_tokens": 5}', '{"text": "one"}', '{"prompt": "one"'])
def test_cli_generate_refuses_a_file_line_it_would_misread_before_asking(tmp_path, capsys, line):
    path = tmp_path / "prompts.jsonl"
    path.write_text(f"plain prompt\n{line}\n")
    assert scalarlm_cli(["--url", "http://127.0.0.1:9", "generate", "--model", "m", "--file", str(path)]) == 2
    assert "line 2" in capsys.readouterr().err


def test_cli_train_refuses_a_set_its_own_flag_gives(tmp_path, capsys):
    assert scalarlm_cli(["--url", "http://127.0.0.1:9", "train", str(tmp_path / "rows.jsonl"), "--model", "m",
                         "--set", "steps=5"]) == 2
    assert "--set steps: give it as --steps" in capsys.readouterr().err
