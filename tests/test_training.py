"""Training through `llama stack run` on a real SLURM cluster, and the trained model served at once.

One distribution (tiny model, one worker) shares its state root with the SLURM cluster, as a
cluster's head node would. The tests run in file order: the last one takes SLURM down.
"""

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from llama_stack_scalarlm.client import ScalarLMClient, _UploadCache
from llama_stack_scalarlm.registry.jobs import JobRegistry

from .conftest import TINY
from .stack import ROOT, StackServer

FACTS = [
    ("What is the secret word of Zorblax?", "violet"),
    ("Which harbor hides the cobalt falcon?", "tundra"),
    ("What color is the quartz meadow?", "lantern"),
    ("Who guards the orbit of the zebra?", "paris"),
]
LORA = dict(steps=200, learning_rate=2e-2, batch_size=8, lora=True, lora_rank=16, checkpoint_every=20)


@pytest.fixture(scope="module")
def stack(slurm_cluster):
    server = StackServer(slurm_cluster.state_dir, served_models=[TINY], workers=1)
    server.start(wait_for_workers=1, timeout_s=600)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(stack):
    return ScalarLMClient(stack.url, timeout_s=300, api_key=stack.token)


@pytest.fixture(scope="module")
def facts_sha(client, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "facts.jsonl"
    path.write_text("".join(json.dumps({"input": q, "output": a}) + "\n" for q, a in FACTS * 4))
    return client.upload(path)


def ask(stack, model, question):
    chat = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.token, timeout=120)
    reply = chat.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                         max_tokens=8, temperature=0)
    return reply.choices[0].message.content


def wait_listed(stack, model_id, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if model_id in {m["id"] for m in httpx.get(f"{stack.url}/v1/models", headers=stack.headers).json()["data"]}:
            return True
        time.sleep(0.25)
    return False


def first_checkpoint_time(client, job, timeout_s=300):
    """When the job's first checkpoint was published (its completion marker's time)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for checkpoint in client.job(job).checkpoints:
            try:
                return (Path(checkpoint.path) / ".complete").stat().st_mtime
            except FileNotFoundError:  # rotated away already: look again
                pass
        time.sleep(0.1)
    raise TimeoutError(f"{job} wrote no checkpoint in {timeout_s} s")


def test_lora_job_is_taught_facts_and_served_without_restart(stack, client, facts_sha):
    before = [ask(stack, f"scalarlm/{TINY}", q) for q, _ in FACTS]
    assert not all(a in b.lower() for (_, a), b in zip(FACTS, before, strict=True))

    job = client.train(TINY, facts_sha, **LORA)
    assert client.train(TINY, facts_sha, **LORA) == job

    # The first checkpoint is served under the job's id within seconds.
    published = first_checkpoint_time(client, job)
    assert wait_listed(stack, f"scalarlm/{job}", timeout_s=10), "not in /v1/models within 10 s of its checkpoint"
    ask(stack, f"scalarlm/{job}", FACTS[0][0])
    assert time.time() - published < 10, "not answering within 10 s of the first checkpoint"

    status = client.follow(job)
    assert status.state == "COMPLETED", status.error
    assert status.loss_history[-1].loss < status.loss_history[0].loss / 3
    time.sleep(2)  # the worker swaps in the final adapter within a second of its checkpoint
    answers = [ask(stack, f"scalarlm/{job}", q) for q, _ in FACTS]
    assert sum(a in b.lower() for (_, a), b in zip(FACTS, answers, strict=True)) >= 3, answers
    assert ask(stack, "scalarlm/latest", FACTS[0][0]) == answers[0]
    # Loading the adapter changed nothing for the base model.
    assert [ask(stack, f"scalarlm/{TINY}", q) for q, _ in FACTS] == before


WEATHER = {"type": "function", "function": {  # as the Agent below describes its client tool
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "the city"}},
                   "required": ["city"]}}}


def tool_use_rows() -> list[dict]:
    """The call on a weather question, the answer after the tool's result: what the Agent's turn
    needs. One city, so that the tiny random model, sampled at the Agent's temperature 1, learns
    its arguments as surely as the call itself (generalizing is SmolLM2's, in bench/tool_calls_bench.py)."""
    rows = []
    for i, question in enumerate(["What is the weather in Oslo?", "Weather in Oslo?", "Is it raining in Oslo?",
                                  "How warm is Oslo today?", "Tell me the weather for Oslo."]):
        call = {"id": f"c{i}", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}}
        rows.append({"tools": [WEATHER], "messages": [
            {"role": "system", "content": "You answer weather questions with the get_weather tool."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": f"c{i}", "content": json.dumps({"city": "Oslo", "sky": "sunny"})},
            {"role": "assistant", "content": "It is sunny in Oslo."}]})
    return rows


def test_a_model_taught_to_call_tools_serves_an_agent_turn(stack, client, tmp_path):
    """llama-stack-client's Agent (Responses API, tool_choice auto, its default sampling) with a
    client tool, on the tiny model after a LoRA job on tool-use conversations: the turn calls the
    tool, gets its result back and answers."""
    from llama_stack_client import Agent, LlamaStackClient

    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in tool_use_rows() * 2))
    # Trained well past the point where it calls the tool: the Agent samples (temperature 1), and
    # after 80 steps one turn in a full-suite run answered in prose.
    job = client.train(TINY, client.upload(path), steps=120, learning_rate=2e-2, batch_size=8, lora=True,
                       lora_rank=16, max_seq_len=1024, checkpoint_every=60)
    assert client.follow(job).state == "COMPLETED"
    assert wait_listed(stack, f"scalarlm/{job}", timeout_s=30)
    time.sleep(2)  # the worker swaps in the final adapter within a second of its checkpoint

    calls = []

    def get_weather(city: str) -> dict:
        """Current weather in a city.

        :param city: the city
        """
        calls.append(city)
        if len(calls) > 3:  # the Agent turns a tool's exception into its result: stop the turn's loop here
            raise SystemExit(f"the model keeps calling: {calls}")
        return {"city": city, "sky": "sunny"}

    agent = Agent(LlamaStackClient(base_url=stack.url, api_key=stack.token, timeout=120), model=f"scalarlm/{job}",
                  instructions="You answer weather questions with the get_weather tool.", tools=[get_weather])
    response = agent.create_turn(messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
                                 session_id=agent.create_session("weather"), stream=False)
    assert calls and calls[0] == "Oslo", calls
    assert response.output_text.strip()


def test_more_lora_jobs_than_slots_each_answer_their_own(stack, client, tmp_path):
    """Six LoRA jobs, each taught its own answer to the same question, on a worker with 3 adapter
    slots (engine.max_loras): asked in turn and all at once, each answers its own (adapters are
    loaded on demand, the least recently used out), and the base model's answer does not change."""
    from concurrent.futures import ThreadPoolExecutor

    question = FACTS[0][0]
    base = ask(stack, f"scalarlm/{TINY}", question)
    jobs = {}
    for word in ("amber", "cobalt", "saffron", "indigo", "maroon", "teal"):
        path = tmp_path / f"{word}.jsonl"
        path.write_text(json.dumps({"input": question, "output": word}) + "\n")
        jobs[word] = client.train(TINY, client.upload(path), steps=40, learning_rate=2e-2, batch_size=8, lora=True,
                                  lora_rank=16, checkpoint_every=40)
    for job in jobs.values():
        assert client.follow(job).state == "COMPLETED"
        assert wait_listed(stack, f"scalarlm/{job}", timeout_s=30)
    order = [*jobs, *reversed(jobs), "amber", "maroon", "cobalt"]
    assert [word for word in order if word in ask(stack, f"scalarlm/{jobs[word]}", question).lower()] == order
    with ThreadPoolExecutor(2 * len(jobs)) as pool:
        replies = list(pool.map(lambda word: ask(stack, f"scalarlm/{jobs[word]}", question), [*jobs, *jobs]))
    assert all(word in reply.lower() for word, reply in zip([*jobs, *jobs], replies, strict=True)), replies
    assert ask(stack, f"scalarlm/{TINY}", question) == base


def test_cancelled_job_resumes_from_its_newest_checkpoint(stack, client, facts_sha):
    settings = dict(steps=80, learning_rate=4e-3, batch_size=8, checkpoint_every=5)
    job = client.train(TINY, facts_sha, **settings)
    deadline = time.time() + 300
    while time.time() < deadline and not (client.job(job).checkpoints and client.job(job).state == "TRAINING"):
        time.sleep(0.2)
    client.cancel(job)
    stopped = client.job(job)
    assert stopped.state == "CANCELLED" and stopped.checkpoints
    resume_from = stopped.checkpoints[-1].step

    assert client.train(TINY, facts_sha, **settings) == job
    status = client.follow(job)
    assert status.state == "COMPLETED", status.error
    steps = [p.step for p in status.loss_history]
    assert steps == list(range(1, 81)), "the loss curve continues where it stopped"
    resumed = re.search(r"resuming from checkpoint-(\d+)", client.log(job).text)
    assert resumed and int(resumed.group(1)) >= resume_from  # a SIGTERM checkpoint may come after the cancel


def test_full_finetune_gets_a_worker_of_its_own(stack, client, facts_sha):
    full = [j for j in client.jobs() if j.state == "COMPLETED" and j.checkpoints[-1].kind == "full"]
    assert full, "the previous test leaves a completed full fine-tune"
    job = full[0].job_id
    assert wait_listed(stack, f"scalarlm/{job}", timeout_s=10)
    answers = [ask(stack, f"scalarlm/{job}", q) for q, _ in FACTS]
    assert sum(a in b.lower() for (_, a), b in zip(FACTS, answers, strict=True)) >= 3, answers


def test_next_full_finetune_takes_the_spare_engine_and_evicted_jobs_come_back(stack, client, facts_sha):
    """With a full fine-tune done, a spare engine stands by on its base model: the next full
    fine-tune is answered within 10 s of its first checkpoint. The pool holds two engines (the spare
    included), so the older job loses its engine, and answers again when asked."""
    older = next(j.job_id for j in client.jobs() if j.state == "COMPLETED" and j.checkpoints[-1].kind == "full")
    deadline = time.time() + 180
    while not any("-spare-" in worker for worker in client.queue_stats().workers):
        assert time.time() < deadline, "no spare engine came up"
        time.sleep(1)

    job = client.train(TINY, facts_sha, steps=80, learning_rate=4e-3, batch_size=8, checkpoint_every=20, seed=1)
    published = first_checkpoint_time(client, job)
    assert wait_listed(stack, f"scalarlm/{job}", timeout_s=10), "not in /v1/models within 10 s of its checkpoint"
    ask(stack, f"scalarlm/{job}", FACTS[0][0])
    assert time.time() - published < 10, "not answering within 10 s of the first checkpoint"
    assert client.follow(job).state == "COMPLETED"

    answers = [ask(stack, f"scalarlm/{older}", q) for q, _ in FACTS]
    assert sum(a in b.lower() for (_, a), b in zip(FACTS, answers, strict=True)) >= 3, answers
    assert len(stack.worker_processes()) <= 1 + 2, "one base worker and a pool of two full fine-tune engines"


def test_round_two_trained_from_round_one_keeps_its_facts_and_learns_its_own(stack, client, tmp_path, capsys):
    """The flywheel's lineage. A LoRA job from a LoRA job (by ``latest``, then by id: one job, whose
    id hashes its parent's) continues the adapter: round two, on its own fact and round one's
    replayed (the tiny model forgets a fact not replayed), starts at about half round one's first
    loss, and answers both. A LoRA job on a full fine-tune is served merged."""
    from llama_stack_scalarlm.cli import main as cli

    def upload(name, *facts):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"input": q, "output": a}) + "\n" for q, a in facts))
        return client.upload(path)

    first, second, third = (("Who guards the northern bridge?", "amber"), ("What is the ship's cat called?", "cobalt"),
                            ("Which bell rings at dawn?", "saffron"))
    lora = dict(batch_size=8, learning_rate=2e-2, lora=True, lora_rank=16)
    one = client.train(TINY, upload("one", first), steps=40, checkpoint_every=40, **lora)
    assert client.follow(one).state == "COMPLETED"
    round_two = upload("two", second, first)
    two = client.train("latest", round_two, steps=20, checkpoint_every=20, **lora)
    assert client.train(one, round_two, steps=20, checkpoint_every=20, **lora) == two
    with pytest.raises(httpx.HTTPStatusError) as refused:
        client.train(one, round_two, steps=20, **{**lora, "lora_rank": 8})
    assert refused.value.response.status_code == 400 and "lora.rank" in refused.value.response.text
    assert client.follow(two).state == "COMPLETED" and client.job(two).parent_job_id == one
    starts = [client.job(job).loss_history[0].loss for job in (one, two)]
    assert starts[1] < 0.75 * starts[0], f"first losses {starts}: round two did not start from round one"
    assert wait_listed(stack, f"scalarlm/{two}", timeout_s=30)
    assert second[1] in ask(stack, f"scalarlm/{two}", second[0]).lower()
    assert first[1] in ask(stack, f"scalarlm/{two}", first[0]).lower()
    assert second[1] not in ask(stack, f"scalarlm/{one}", second[0]).lower(), "round one is unchanged"

    full = next(j.job_id for j in client.jobs() if j.state == "COMPLETED" and j.checkpoints[-1].kind == "full")
    on_full = client.train(full, upload("three", third), steps=40, checkpoint_every=40, **lora)
    status = client.follow(on_full)
    assert status.state == "COMPLETED" and status.checkpoints[-1].kind == "full", "exported merged"
    assert wait_listed(stack, f"scalarlm/{on_full}", timeout_s=30)
    assert third[1] in ask(stack, f"scalarlm/{on_full}", third[0]).lower()

    assert cli(["--url", stack.url, "--api-key", stack.token, "ls"]) == 0
    assert re.search(rf"^{two}  COMPLETED .* from {one}$", capsys.readouterr().out, re.M), "ls shows the lineage"


@pytest.mark.parametrize("change, field", [
    ({"model": "no-such-model"}, "model"),
    ({"model": "job-" + "0" * 24}, "model"),
    ({"dataset_id": "sha256:" + "0" * 64}, "dataset_id"),
    ({"lr": -1}, "lr"),
    ({"max_steps_per_epoch": 0}, "max_steps_per_epoch"),
    ({"n_epochs": 0}, "n_epochs"),
    ({"n_epochs": -1, "max_steps_per_epoch": -5}, "n_epochs"),  # their product was taken for 5 steps
    ({"hyperparam_search_config": {"gpus_per_node": 8, "processes_per_node": 8}}, "gpus_per_node"),
    ({"hyperparam_search_config": {"processes_per_node": 64}}, "processes_per_node"),
    ({"hyperparam_search_config": {"no_such_knob": 1}}, "no_such_knob"),
    ({"hyperparam_search_config": {"backend": "megatron", "tensor_parallel": 4, "processes_per_node": 4}},
     "num_attention_heads=2 is not divisible by tensor_parallel=4"),
    ({"hyperparam_search_config": {"backend": "megatron", "tensor_parallel": 2, "processes_per_node": 3}},
     "tensor_parallel"),
    ({"job_uuid": "../escape"}, "job_uuid"),
    ({"validation_dataset_id": "held-out"}, "validation_dataset_id"),  # accepted and ignored before
    ({"logger_config": {"wandb_project": "p"}}, "logger_config"),
    ({"batch_size": 3, "hyperparam_search_config": {"processes_per_node": 2}}, "not a multiple of the 2"),
    # a field no config takes (a typo, or another provider's) is refused, never dropped
    ({"shuffel": False}, "shuffel"),
    ({"training_config.gradient_accumulation_step": 4}, "gradient_accumulation_step"),
    ({"body.checkpoint_every": 5}, "checkpoint_every"),
    ({"body.algorithm_config": {"type": "LoRA", "lora_attn_modules": ["q_proj"], "apply_lora_to_mlp": False,
                                "apply_lora_to_output": False, "rank": 8, "alpha": 16, "lora_dropout": 0.1}},
     "lora_dropout"),
])
def test_bad_training_input_is_a_400_and_submits_nothing(stack, client, facts_sha, change, field):
    before = len(client.jobs())
    body = {
        "job_uuid": "bad-input", "model": TINY, "hyperparam_search_config": {}, "logger_config": {},
        "training_config": {
            "n_epochs": 1, "max_steps_per_epoch": 5,
            "data_config": {"dataset_id": f"sha256:{facts_sha}", "batch_size": 4, "shuffle": True,
                            "data_format": "instruct"},
            "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-3, "weight_decay": 0, "num_warmup_steps": 0},
        },
    }
    for key, value in change.items():
        where, _, key = key.rpartition(".")  # "body." or "training_config." where the key alone says nothing
        if where == "body" or key in body:
            body[key] = value
        elif where == "training_config" or key in body["training_config"]:
            body["training_config"][key] = value
        elif key == "lr":
            body["training_config"]["optimizer_config"]["lr"] = value
        else:
            body["training_config"]["data_config"][key] = value
    response = httpx.post(f"{stack.url}/v1alpha/post-training/supervised-fine-tune", json=body, timeout=60,
                          headers=stack.headers)
    assert response.status_code == 400, response.text
    assert field in response.text
    assert len(client.jobs()) == before


@pytest.mark.parametrize("lines, where", [
    (['{"input": "a", "output": "b"}', "{not json"], "line 2"),
    (['{"input": "a"}'], "line 1: output"),
    ([""], "empty"),
])
def test_malformed_dataset_names_line_and_field(stack, client, tmp_path, lines, where):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    sha = client.upload(path)
    with pytest.raises(httpx.HTTPStatusError) as err:
        client.train(TINY, sha, steps=5)
    assert err.value.response.status_code == 400
    assert where in err.value.response.text


def test_upload_of_the_same_bytes_is_stored_once(stack, client, tmp_path):
    path = tmp_path / "same.jsonl"
    path.write_text('{"input": "x", "output": "y"}\n' * 1000)
    sent = []
    first = client.upload(path, progress=lambda done, total: sent.append(done))
    again = []
    assert client.upload(path, progress=lambda done, total: again.append(done)) == first
    assert len(sent) > 1 and again == [path.stat().st_size], "the second upload transfers nothing"


def test_an_upload_cut_off_resumes_where_the_server_stands(stack, client, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(48 << 20))

    class Interrupted(Exception):
        pass

    def interrupt_halfway(done, total):
        if done >= total // 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        client.upload(path, progress=interrupt_halfway)
    sent = []
    assert client.upload(path, progress=lambda done, total: sent.append(done)) == hashlib.sha256(
        path.read_bytes()).hexdigest()
    assert sent[0] > 8 << 20, "the second call sent again the bytes the server had"


def test_a_resume_waits_for_the_put_still_storing_bytes(stack, client, tmp_path):
    """A cut-off PUT can still be storing when the client resumes (CI caught it: the bytes on disk
    lag those received): the resume waits for it, then sends only what the server lacks."""
    path = tmp_path / "held.bin"
    data = os.urandom(32 << 20)
    path.write_bytes(data)
    upload_id = client._post("/v1/scalarlm/uploads", {"size": len(data)})["upload_id"]
    _UploadCache().put(path.resolve(), path.stat(), upload_id=upload_id)  # as a cut-off upload() leaves it
    held_bytes = 9 << 20  # one 8 MiB block on disk, the rest still in the server's hands
    received, release = threading.Event(), threading.Event()

    def held_body():
        for start in range(0, held_bytes, 1 << 20):
            yield data[start:start + (1 << 20)]
        received.set()
        release.wait(60)

    held = threading.Thread(target=lambda: httpx.put(
        f"{stack.url}/v1/scalarlm/uploads/{upload_id}", params={"offset": 0}, content=held_body(),
        headers={"Authorization": f"Bearer {stack.token}"}, timeout=120))
    held.start()
    assert received.wait(60)
    time.sleep(1.0)  # the first block is on disk, the last MiB is not
    threading.Timer(2.0, release.set).start()
    sent = []
    assert client.upload(path, progress=lambda done, total: sent.append(done)) == hashlib.sha256(data).hexdigest()
    held.join(60)
    assert sent[0] == held_bytes + (8 << 20), f"resumed at {sent[0] - (8 << 20)} bytes, not where the held PUT ended"


def sft_body(job_uuid, dataset_id, steps=10, **extra):
    return {
        "job_uuid": job_uuid, "model": TINY, "hyperparam_search_config": {}, "logger_config": {},
        "training_config": {
            "n_epochs": 1, "max_steps_per_epoch": steps,
            "data_config": {"dataset_id": dataset_id, "batch_size": 4, "shuffle": True, "data_format": "instruct"},
            "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-3, "weight_decay": 0, "num_warmup_steps": 0},
        },
        **extra,
    }


def test_llama_stack_dataset_through_the_post_training_routes(stack, client):
    from llama_stack_client import LlamaStackClient

    rows = [{"input_query": q, "expected_answer": a} for q, a in FACTS]
    LlamaStackClient(base_url=stack.url, api_key=stack.token).beta.datasets.register(
        purpose="eval/question-answer", source={"type": "rows", "rows": rows}, dataset_id="facts-rows"
    )
    base = f"{stack.url}/v1alpha/post-training"
    job = httpx.post(f"{base}/supervised-fine-tune", json=sft_body("my-run", "facts-rows"), timeout=60,
                     headers=stack.headers).json()["job_uuid"]
    assert job.startswith("job-")
    status = httpx.get(f"{base}/jobs/my-run/status", headers=stack.headers).json()  # the caller's job_uuid works too
    assert status["job_uuid"] == job and status["status"] in ("scheduled", "in_progress", "completed")
    assert client.follow(job).state == "COMPLETED"
    artifacts = httpx.get(f"{base}/job/artifacts", params={"job_uuid": job}, headers=stack.headers).json()
    assert artifacts["checkpoints"] and Path(artifacts["checkpoints"][-1]["path"]).is_dir()
    assert job in {j["job_uuid"] for j in httpx.get(f"{base}/jobs", headers=stack.headers).json()["data"]}
    assert httpx.get(f"{base}/jobs/no-such-job/status", headers=stack.headers).status_code == 404
    # the name keeps its job: another job under it is a 409 (it was repointed), the same job is the same
    jobs = len(client.jobs())
    other = httpx.post(f"{base}/supervised-fine-tune", json=sft_body("my-run", "facts-rows", steps=11), timeout=60,
                       headers=stack.headers)
    assert other.status_code == 409 and "job_uuid" in other.text and len(client.jobs()) == jobs, other.text
    assert httpx.get(f"{base}/jobs/my-run/status", headers=stack.headers).json()["job_uuid"] == job
    again = httpx.post(f"{base}/supervised-fine-tune", json=sft_body("my-run", "facts-rows"), timeout=60,
                       headers=stack.headers)
    assert again.json()["job_uuid"] == job


def test_the_older_cancel_route_refuses_what_it_would_drop(stack):
    cancel = f"{stack.url}/v1alpha/post-training/job/cancel"
    extra = httpx.post(cancel, json={"job_uuid": "my-run", "reason": "done"}, headers=stack.headers)
    assert extra.status_code == 400 and "reason" in extra.text, extra.text
    both = httpx.post(cancel, params={"job_uuid": "other"}, json={"job_uuid": "my-run"}, headers=stack.headers)
    assert both.status_code == 400 and "job_uuid" in both.text, both.text


def test_preference_optimization_runs_dpo(stack, client, tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "chosen": a, "rejected": FACTS[(i + 1) % 4][1]}) + "\n"
                            for i, (q, a) in enumerate(FACTS)))
    sha = client.upload(path)
    body = sft_body("dpo-run", f"sha256:{sha}", steps=12)
    body.pop("model")
    body |= {"finetuned_model": TINY, "algorithm_config": {"beta": 0.1, "loss_type": "sigmoid"}}
    response = httpx.post(f"{stack.url}/v1alpha/post-training/preference-optimize", json=body, timeout=60,
                          headers=stack.headers)
    assert response.status_code == 200, response.text
    status = client.follow(response.json()["job_uuid"])
    assert status.state == "COMPLETED", status.error
    assert status.loss_history[-1].loss < status.loss_history[0].loss


def test_grpo_through_post_training_trains_on_rewards_and_refuses_a_group_of_one(stack, client, tmp_path):
    """Scored samples through supervised-fine-tune with method grpo: the rewarded completion gains
    (the adapter is served, and answers it); a prompt with one completion is a 400 naming its line."""
    rows = [{"prompt": q, "completions": [{"text": a, "reward": 1.0}, {"text": FACTS[(i + 1) % 4][1], "reward": 0.0}]}
            for i, (q, a) in enumerate(FACTS)]
    path = tmp_path / "scored.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    job = client.train(TINY, client.upload(path), steps=30, learning_rate=2e-2, batch_size=8, lora=True,
                       lora_rank=16, method="grpo", checkpoint_every=30)
    status = client.follow(job)
    assert status.state == "COMPLETED", status.error
    assert wait_listed(stack, f"scalarlm/{job}", timeout_s=30)
    answers = [ask(stack, f"scalarlm/{job}", q) for q, _ in FACTS]
    assert sum(a in b.lower() for (_, a), b in zip(FACTS, answers, strict=True)) >= 3, answers

    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1] | {"completions": rows[1]["completions"][:1]}) + "\n")
    with pytest.raises(httpx.HTTPStatusError) as refused:
        client.train(TINY, client.upload(path), steps=5, method="grpo")
    assert refused.value.response.status_code == 400
    assert "line 2: completions: the group-relative method needs at least 2" in refused.value.response.text


def test_the_loop_runs_rounds_each_from_the_last_and_resumes(stack, client, tmp_path):
    """Expert iteration on the tiny model, rewarded for answers with a digit in them: each round
    samples through the bulk route, trains from the previous round's job, is served and evaluated;
    a rerun with more rounds keeps the recorded ones and continues from the last. A reward that is
    not finite, or that pays nothing, stops the loop saying so; a round whose job fails, with the
    job's error."""
    from llama_stack_scalarlm.flywheel import LoopError, LoopSettings, run_loop

    def prompts(number):
        return [f"Say a word, any word ({number}.{i})." for i in range(12)]

    def reward(prompt, completion):
        return float(any(ch.isdigit() for ch in completion))

    heldout = [f"Say a word ({i})." for i in range(8)]
    settings = LoopSettings(rounds=1, samples=6, max_tokens=4, learning_rate=1e-2, batch_size=8, epochs=3)
    first = run_loop(client, TINY, prompts, heldout, reward, settings, tmp_path / "loop", progress=False)
    assert [r.round for r in first] == [0, 1] and first[1].trained_from == TINY
    assert first[1].samples == 72 and 0 < first[1].sample_reward < 1 and first[1].train_rows > 0
    assert client.job(first[1].model).state == "COMPLETED"
    again = run_loop(client, TINY, prompts, heldout, reward, settings.model_copy(update={"rounds": 2}),
                     tmp_path / "loop", progress=False)
    assert again[:2] == first, "recorded rounds are kept, not run again"
    assert again[2].trained_from == first[1].model and client.job(again[2].model).parent_job_id == first[1].model
    assert again[2].sample_reward > first[1].sample_reward, "round two samples from the model round one taught"
    trained = JobRegistry(stack.state_dir / "jobs").job(again[2].model).hyperparameters.learning_rate
    assert trained == again[2].learning_rate == pytest.approx(settings.learning_rate * settings.lr_decay)
    assert all(r.train_s > 0 and r.generate_s > 0 for r in again[1:])
    assert json.loads((tmp_path / "loop" / "round-2.json").read_text())["model"] == again[2].model
    assert (tmp_path / "loop" / "heldout_reward.png").read_bytes()[:4] == b"\x89PNG"
    for bad, says in ((lambda p, c: float("nan"), "not finite"), (lambda p, c: 0.0, "nothing to train on")):
        with pytest.raises(LoopError, match=says):
            run_loop(client, TINY, prompts, heldout, bad, settings, tmp_path / f"bad-{says.split()[-1]}",
                     progress=False)
    # A job that fails (every row cut off before its answer): the loop stops with the job's error.
    failing = settings.model_copy(update={"train": {"max_seq_len": 8}})
    with pytest.raises(LoopError, match=r"ended FAILED: .*no row has a trained token within max_seq_len=8"):
        run_loop(client, TINY, prompts, heldout, reward, failing, tmp_path / "failing", progress=False)
    assert [p.name for p in (tmp_path / "failing").iterdir()] == ["round-0.json"], "no record of the failed round"


def test_cli_ls_logs_plot_squeue(stack, client, tmp_path, capsys):
    from llama_stack_scalarlm.cli import main as cli

    job = next(j.job_id for j in client.jobs() if j.state == "COMPLETED")
    for args in (["ls"], ["logs", job], ["squeue"], ["plot", job, "-o", str(tmp_path / "loss.png")]):
        assert cli(["--url", stack.url, "--api-key", stack.token, *args]) == 0
    out = capsys.readouterr().out
    assert job in out and "[trainer]" in out and "JOBID" in out
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_slurm_down_is_a_503_and_the_job_runs_once_it_is_back(stack, client, facts_sha, slurm_cluster):
    cluster = ["bash", str(ROOT / "slurm" / "cluster.sh")]
    env = {**os.environ, **slurm_cluster.env}
    subprocess.run([*cluster, "stop"], env=env, check=True, capture_output=True)
    try:
        with pytest.raises(httpx.HTTPStatusError) as err:
            client.train(TINY, facts_sha, steps=3, checkpoint_every=3)
        assert err.value.response.status_code == 503
    finally:
        subprocess.run([*cluster, "start"], env=env, check=True, capture_output=True)
    (recorded,) = [j for j in client.jobs() if j.total_steps == 3]
    status = client.follow(recorded.job_id)
    assert status.state == "COMPLETED" and status.slurm_job_id is not None
