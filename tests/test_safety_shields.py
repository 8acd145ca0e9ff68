"""ScalarLM shields through `llama stack run` and llama-stack-client, judged by a guard the platform
trained: the tiny model, taught by a post_training job on AILuminate demo prompts (labelled by
hazard) against generated benign requests.

The tiny model can only memorize, so these tests check the plumbing (prompt, verdict, hazards,
scores, failures) on prompts it was trained on; what a guard learns is measured on held-out items
by the guard benchmark. No prompt text is printed: assertions compare ids, hazards and flags.
"""

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import llama_stack_client
import pytest

from llama_stack_scalarlm.auth.tokens import TokenStore
from llama_stack_scalarlm.client import ScalarLMClient
from llama_stack_scalarlm.registry.jobs import JobRegistry
from llama_stack_scalarlm.safety.guard_data import benign_prompts, input_guard_rows
from llama_stack_scalarlm.safety.hazards import HAZARDS
from llama_stack_scalarlm.safety.prompt_set import load_prompt_set, sample
from llama_stack_scalarlm.safety.shields import REFUSAL

from .ailuminate import DEMO_NAME, ailuminate_dir
from .conftest import TINY
from .test_training import wait_listed

SHIELD = "ailuminate-input"


@pytest.fixture(scope="module")
def taught(slurm_stack, tmp_path_factory):
    """(server, guard model id, hazardous prompts it was taught, benign prompts it was taught), on
    the distribution the API fuzz ran on (conftest's ``slurm_stack``); this module is its last user
    and stops it, so its engine does not stay up through the rest of the suite."""
    hazardous = [p for p in sample(load_prompt_set(ailuminate_dir() / DEMO_NAME), per_group=1, seed=0)
                 if len(p.text) < 400][:8]
    benign = benign_prompts(8, seed=0)
    server = slurm_stack
    client = ScalarLMClient(server.url, timeout_s=300, api_key=server.token)
    path = tmp_path_factory.mktemp("guard") / "guard.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in input_guard_rows(hazardous, benign, list(HAZARDS))))
    job = client.train(TINY, client.upload(path), steps=100, learning_rate=2e-2, batch_size=8, lora=True,
                       lora_rank=16, max_seq_len=1024, checkpoint_every=100, purpose="guard")
    done = client.follow(job)
    assert done.state == "COMPLETED", done.error
    assert wait_listed(server, f"scalarlm/{job}", timeout_s=30)
    yield server, f"scalarlm/{job}", hazardous, benign
    server.stop()


@pytest.fixture(scope="module")
def stack_client(taught):
    from llama_stack_client import LlamaStackClient

    server, guard, _, _ = taught
    client = LlamaStackClient(base_url=server.url, api_key=server.token, timeout=300)
    client.shields.register(shield_id=SHIELD, provider_id="scalarlm", provider_shield_id=guard,
                            params={"check": "user"})
    return client


def user(text):
    return [{"role": "user", "content": text}]


def test_a_registered_shield_flags_a_hazardous_request_by_hazard_and_passes_a_benign_one(taught, stack_client):
    _, _, hazardous, benign = taught
    flagged = [stack_client.safety.run_shield(shield_id=SHIELD, messages=user(p.text)).violation for p in hazardous]
    assert sum(v is not None for v in flagged) >= len(hazardous) - 1, "the guard passed hazardous prompts it was taught"
    for prompt, violation in zip(hazardous, flagged, strict=True):
        if violation is not None:
            assert violation.violation_level == "error" and violation.user_message == REFUSAL
            assert violation.metadata["hazards"] == [prompt.hazard], prompt.id
            assert violation.metadata["roles"] == ["user"]
            assert 0.5 < violation.metadata["unsafe_probability"] <= 1
    passed = [stack_client.safety.run_shield(shield_id=SHIELD, messages=user(text)).violation for text in benign]
    assert sum(v is None for v in passed) >= len(benign) - 1, passed


def test_the_default_shield_judges_with_the_newest_guard_and_latest_is_never_a_guard(taught, stack_client):
    """The run config's shield ``ailuminate`` asks the model ``guard``: the newest job trained as a
    guard, picked up with no restart, and never what ``latest`` serves."""
    server, guard, hazardous, benign = taught
    assert wait_listed(server, "scalarlm/guard", timeout_s=30)
    shield, = [s for s in stack_client.shields.list() if s.identifier == "ailuminate"]
    assert shield.provider_resource_id == "scalarlm/guard"
    flagged = stack_client.safety.run_shield(shield_id="ailuminate", messages=user(hazardous[0].text)).violation
    assert flagged is not None and flagged.metadata["guard_model"] == "scalarlm/guard", flagged
    assert flagged.user_message == REFUSAL and flagged.metadata["hazards"] == [hazardous[0].hazard]
    assert stack_client.safety.run_shield(shield_id="ailuminate", messages=user(benign[0])).violation is None
    # A run judged by `guard` is a run of the guard it names now: a guard trained later is another run.
    from llama_stack_scalarlm.safety.run_schema import AILuminateRunRequest, GuardEvaluator

    request = AILuminateRunRequest(model=TINY, evaluator=GuardEvaluator(model="scalarlm/guard"), per_group=1,
                                   hazards=["vcr"], max_tokens=8)
    run = ScalarLMClient(server.url, timeout_s=300, api_key=server.token).ailuminate(request, poll_s=0.5)
    assert run.record is not None and run.record.evaluator == f"guard:{guard.removeprefix('scalarlm/')}", run
    registry = JobRegistry(server.state_dir / "jobs")
    assert registry.latest_of({guard.removeprefix("scalarlm/"): time.time()}) is None  # a guard is never latest
    assert registry.latest_of({guard.removeprefix("scalarlm/"): time.time()}, "guard") == guard.removeprefix("scalarlm/")


def test_a_shield_that_checks_user_turns_leaves_the_reply_to_another(taught, stack_client):
    _, _, hazardous, benign = taught
    # The hazardous text as the assistant's reply to a benign request: this shield judges the user turn.
    messages = [*user(benign[0]), {"role": "assistant", "content": hazardous[0].text}]
    assert stack_client.safety.run_shield(shield_id=SHIELD, messages=messages).violation is None


def test_moderations_give_one_result_per_input_with_scores_from_the_guard(taught, stack_client):
    server, guard, hazardous, benign = taught
    moderation = stack_client.moderations.create(input=[hazardous[0].text, benign[0], ""], model=guard)
    assert [r.flagged for r in moderation.results] == [True, False, False]
    unsafe, safe, empty = moderation.results
    assert set(unsafe.categories) == set(HAZARDS)
    assert [h for h, on in unsafe.categories.items() if on] == [hazardous[0].hazard]
    assert unsafe.category_scores[hazardous[0].hazard] > 0.5
    assert all(score == 0.0 for h, score in unsafe.category_scores.items() if h != hazardous[0].hazard)
    assert not any(safe.categories.values()) and all(score == 0 for score in safe.category_scores.values())
    assert 0 <= safe.metadata["unsafe_probability"] < 0.5  # the guard's own probability, not a constant
    assert empty.metadata["unsafe_probability"] == 0.0  # nothing to judge: safe without asking


def test_a_guard_that_does_not_answer_in_format_fails_closed(taught, stack_client):
    """The untrained tiny model as a guard: its reply is no verdict, so the shield reports the
    guard's failure as a violation (never a pass, never a 500), and moderation flags it."""
    stack_client.shields.register(shield_id="untrained", provider_id="scalarlm",
                                  provider_shield_id=f"scalarlm/{TINY}")
    violation = stack_client.safety.run_shield(shield_id="untrained", messages=user("hello")).violation
    assert violation is not None and violation.metadata["guard_failed"]
    result, = stack_client.moderations.create(input=["hello"], model=f"scalarlm/{TINY}").results
    assert result.flagged and result.metadata["guard_failed"]


@pytest.mark.parametrize("params, field", [({"hazards": ["vcr", "xyz"]}, "params.hazards"),
                                           ({"checks": "user"}, "params.checks")])
def test_bad_shield_params_are_a_400_naming_the_field_and_nothing_is_registered(taught, stack_client, params, field):
    server, guard, _, _ = taught
    answer = httpx.post(f"{server.url}/v1/shields", headers=server.headers, json={
        "shield_id": "bad", "provider_id": "scalarlm", "provider_shield_id": guard, "params": params})
    assert answer.status_code == 400 and field in answer.text, answer.text
    assert "bad" not in [s.identifier for s in stack_client.shields.list()]


def test_unknown_shields_guards_and_moderation_models_are_named(taught, stack_client):
    server, guard, _, _ = taught
    unknown = httpx.post(f"{server.url}/v1/safety/run-shield", headers=server.headers,
                         json={"shield_id": "no-such-shield", "messages": user("hi")})
    # The stack's router refuses an unknown shield before any provider sees it: its 400 names it.
    assert unknown.status_code == 400 and "no-such-shield" in unknown.text, unknown.text
    stack_client.shields.register(shield_id="gone", provider_id="scalarlm", provider_shield_id="scalarlm/no-such-model")
    missing = httpx.post(f"{server.url}/v1/safety/run-shield", headers=server.headers,
                         json={"shield_id": "gone", "messages": user("hi")})
    assert missing.status_code == 404 and "no-such-model" in missing.text, missing.text
    model = httpx.post(f"{server.url}/v1/moderations", headers=server.headers,
                       json={"input": ["hi"], "model": "not-a-guard"})
    assert model.status_code == 400 and "not-a-guard" in model.text, model.text
    # moderations find a shield by its provider_shield_id: a second one with other params is refused
    twin = httpx.post(f"{server.url}/v1/shields", headers=server.headers, json={
        "shield_id": "vcr-only", "provider_id": "scalarlm", "provider_shield_id": "scalarlm/guard",
        "params": {"hazards": ["vcr"]}})
    assert twin.status_code == 400 and "provider_shield_id" in twin.text and "ailuminate" in twin.text, twin.text
    assert "vcr-only" not in [s.identifier for s in stack_client.shields.list()]
    image = httpx.post(f"{server.url}/v1/safety/run-shield", headers=server.headers, json={
        "shield_id": SHIELD, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]})
    assert image.status_code == 400 and "messages.0.content" in image.text, image.text


RUN = dict(per_group=1, seed=0, max_tokens=12)  # one prompt per hazard and persona: 24


def test_ailuminate_run_gives_a_complete_record_and_resumes_without_asking_again(taught, tmp_path):
    """A stratified sample of the demo set on the tiny model, judged by the trained guard. That guard
    learned the input policy only, so as a judge of replies it is often out of format: each such
    verdict is an error left out of the score, and the consistency check fails the run for it, as
    modelbench's does. The record is complete either way, and asking again asks nothing again."""
    from llama_stack_scalarlm.safety.run_schema import AILuminateRunRequest, GuardEvaluator

    server, guard, _, _ = taught
    client = ScalarLMClient(server.url, timeout_s=300, api_key=server.token)
    request = AILuminateRunRequest(model=TINY, evaluator=GuardEvaluator(model=guard), **RUN)
    run = client.ailuminate(request, poll_s=0.5)
    record = run.record
    assert record is not None, run.error
    assert record.items == 24 and "official" in record.note
    assert record.evaluator == f"guard:{guard}" and record.prompt_set_sha256.startswith("63e2b654")
    assert [s.hazard for s in record.grades.hazards] == list(HAZARDS)
    assert all(s.scored + s.errors == 2 for s in record.grades.hazards)  # every prompt judged once
    errors = sum(s.errors for s in record.grades.hazards)
    assert sum(c.annotation_errors for c in record.counts.values()) == errors
    assert (run.state == "failed") == (100 * errors >= 3 * 24) == bool(record.consistency), record.consistency
    journal = server.state_dir / "safety" / "runs" / run.run_id / "journal.jsonl"
    assert len(journal.read_text().splitlines()) == 72  # per prompt: its request id, its response, a verdict
    assert client.ailuminate(request).run_id == run.run_id
    assert len(journal.read_text().splitlines()) == 72

    # Another user asking the same run gets a run of their own, and cannot read the first one.
    token = TokenStore(server.state_dir).create("another")
    theirs = ScalarLMClient(server.url, timeout_s=300, api_key=token).ailuminate(request, poll_s=0.5)
    assert theirs.run_id != run.run_id and theirs.record is not None and theirs.record.items == 24, theirs.error
    unknown = httpx.get(f"{server.url}/v1/scalarlm/safety/ailuminate/{run.run_id}",
                        headers={"Authorization": f"Bearer {token}"})
    assert unknown.status_code == 404

    cli = subprocess.run([str(Path(sys.executable).parent / "scalarlm"), "--url", server.url, "eval", "ailuminate",
                          "--model", TINY, "--guard", guard, "--per-hazard", "1", "--max-tokens", "12",
                          "--out", str(tmp_path), "--quiet"], env={**os.environ, "SCALARLM_API_KEY": server.token},
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == (1 if record.consistency else 0), cli.stderr[-2000:]
    assert (tmp_path / f"{run.run_id}.json").exists() and (tmp_path / f"{run.run_id}.png").stat().st_size > 1000


def test_the_cli_grades_with_a_judge_or_a_vote_and_names_a_missing_evaluator(taught, tmp_path):
    from llama_stack_scalarlm.safety.run_schema import AILuminateRecord

    server, guard, _, _ = taught

    def cli(*evaluators: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(Path(sys.executable).parent / "scalarlm"), "--url", server.url, "eval", "ailuminate",
                               "--model", TINY, *evaluators, "--per-hazard", "1", "--max-tokens", "8", "--hazard", "vcr",
                               "--out", str(tmp_path), "--quiet"], env={**os.environ, "SCALARLM_API_KEY": server.token},
                              capture_output=True, text=True, timeout=300)

    missing = cli()
    assert missing.returncode != 0 and "--guard" in missing.stderr and "--judge" in missing.stderr
    for evaluators, name in ((["--judge", TINY], f"judge:{TINY}"),
                             (["--guard", guard, "--judge", TINY], f"vote(guard:{guard},judge:{TINY})")):
        done = cli(*evaluators)
        assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: the tiny guard's verdicts fail the check
        records = [AILuminateRecord.model_validate_json(p.read_text()) for p in tmp_path.glob("*.json")]
        [record] = [r for r in records if r.evaluator == name]
        assert record.items == 2
    # The judge's word is constrained to safe/unsafe: even the untrained tiny model gives a verdict on every reply.
    judged = next(r for r in records if r.evaluator == f"judge:{TINY}")
    assert sum(s.errors for s in judged.grades.hazards) == 0 and not judged.consistency, judged.consistency


@pytest.mark.parametrize("change, field", [({"per_group": 0}, "per_group"), ({"hazards": ["xyz"]}, "hazards"),
                                           ({"locale": "de_de"}, "locale"), ({"model": "no-such-model"}, "model"),
                                           ({"prompt_set": "practice"}, "prompt_set"),
                                           ({"evaluator": {"type": "judge", "model": "no-such-judge"}},
                                            "evaluator.model: 'no-such-judge'"),
                                           ({"evaluator": {"type": "vote", "evaluators": [
                                               {"type": "judge", "model": TINY},
                                               {"type": "guard", "model": "no-such-guard"}]}},
                                            "evaluator.evaluators.1.model: 'no-such-guard'")])
def test_bad_ailuminate_requests_name_their_field(taught, change, field):
    server, guard, _, _ = taught
    body = {"model": TINY, "evaluator": {"type": "guard", "model": guard}, **RUN, **change}
    answer = httpx.post(f"{server.url}/v1/scalarlm/safety/ailuminate", headers=server.headers, json=body)
    assert answer.status_code in (400, 404, 422) and field in answer.text, answer.text
    unknown = httpx.get(f"{server.url}/v1/scalarlm/safety/ailuminate/ailum-{'0' * 24}", headers=server.headers)
    assert unknown.status_code == 404 and "run_id" in unknown.text


def test_a_run_whose_server_was_killed_resumes_without_asking_again(taught):
    """kill -9 the server right after a run started: its requests are in the durable queue, and
    the restarted server resumes the run by itself, collects them (one request per prompt, ever)
    and finishes; a run cancelled before the kill stays cancelled. Also: the restarted server's
    worker has an id of its own."""
    from llama_stack_scalarlm.safety.run_schema import AILuminateRun, AILuminateRunRequest, GuardEvaluator

    server, guard, _, _ = taught
    runs = f"{server.url}/v1/scalarlm/safety/ailuminate"
    request = AILuminateRunRequest(model=TINY, evaluator=GuardEvaluator(model=guard), per_group=1, seed=7, max_tokens=64)
    started = httpx.post(runs, headers=server.headers, json=request.model_dump(mode="json"))
    assert started.status_code == 200, started.text
    run_id = started.json()["run_id"]
    other = request.model_copy(update={"seed": 8, "max_tokens": 2})
    cancelled = httpx.post(runs, headers=server.headers, json=other.model_dump(mode="json")).json()["run_id"]
    assert ScalarLMClient(server.url, api_key=server.token).cancel_ailuminate(cancelled).state == "cancelled"
    journal = server.state_dir / "safety" / "runs" / run_id / "journal.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not journal.exists():
        time.sleep(0.05)
    killed = set(server.live_workers())
    server.kill()
    server.start(wait_for_workers=1, timeout_s=600)
    # A new worker id: with its dead predecessor's id, its heartbeats would renew the dead one's
    # leases, and the run would wait for the progress timeout instead of the lease timeout.
    assert not killed & set(server.live_workers())

    def status(rid: str) -> AILuminateRun:
        return AILuminateRun.model_validate(httpx.get(f"{runs}/{rid}", headers=server.headers).json())

    deadline = time.time() + 300
    while (run := status(run_id)).state == "running" and time.time() < deadline:
        time.sleep(0.5)
    assert run.record is not None and run.record.items == 24, run  # the tiny guard's verdicts may fail the consistency check
    assert status(cancelled).state == "cancelled"
    steps = Counter((step["step"], step["id"]) for step in map(json.loads, journal.read_text().splitlines()))
    ids = {pid for _, pid in steps}
    assert len(ids) == 24
    assert all(steps[("submitted", pid)] == 1 and steps[("response", pid)] == 1 for pid in ids), steps


def test_the_eval_api_runs_ailuminate_as_a_benchmark(taught, stack_client):
    """Llama Stack 0.7's eval API: a benchmark whose metadata names the prompt set, run_eval with
    the guard as the llm_as_judge, job_status, job_result with a score row per hazard."""
    server, guard, _, _ = taught
    stack_client.alpha.benchmarks.register(benchmark_id="ailuminate-small", dataset_id="ailuminate-demo-en_us",
                                           scoring_functions=[], provider_id="scalarlm",
                                           metadata={"prompt_set": "demo", "locale": "en_us", "per_group": 1})
    config = {"eval_candidate": {"type": "model", "model": f"scalarlm/{TINY}", "sampling_params": {"max_tokens": 12}},
              "scoring_params": {"ailuminate": {"type": "llm_as_judge", "judge_model": guard}}}
    job = stack_client.alpha.eval.run_eval(benchmark_id="ailuminate-small", benchmark_config=config)
    deadline = time.time() + 300
    while job.status in ("scheduled", "in_progress") and time.time() < deadline:
        time.sleep(0.5)
        job = stack_client.alpha.eval.jobs.status(job_id=job.job_id, benchmark_id="ailuminate-small")
    result = stack_client.alpha.eval.jobs.retrieve(job_id=job.job_id, benchmark_id="ailuminate-small")
    rows = result.scores["ailuminate"].score_rows
    assert [row["hazard"] for row in rows] == list(HAZARDS)
    assert result.scores["ailuminate"].aggregated_results["evaluator"] == f"guard:{guard}"
    assert len(result.generations) == 24 and all("prompt_text" not in g and "text" not in g for g in result.generations)
    bad = httpx.post(f"{server.url}/v1alpha/eval/benchmarks/ailuminate-small/jobs", headers=server.headers,
                     json={"benchmark_config": {**config, "num_examples": 25}})
    assert bad.status_code == 400 and "num_examples" in bad.text, bad.text
    # what AILuminate's own grading replaces is refused, not dropped
    judged = {**config["scoring_params"]["ailuminate"], "aggregation_functions": ["average"]}
    bad = httpx.post(f"{server.url}/v1alpha/eval/benchmarks/ailuminate-small/jobs", headers=server.headers,
                     json={"benchmark_config": {**config, "scoring_params": {"ailuminate": judged}}})
    assert bad.status_code == 400 and "scoring_params.ailuminate" in bad.text, bad.text
    # a run is found under its own benchmark only (one whose metadata asks another seed is another)
    stack_client.alpha.benchmarks.register(benchmark_id="ailuminate-seed-1", dataset_id="ailuminate-demo-en_us",
                                           scoring_functions=[], provider_id="scalarlm",
                                           metadata={"prompt_set": "demo", "locale": "en_us", "per_group": 1, "seed": 1})
    for path in (f"jobs/{job.job_id}", f"jobs/{job.job_id}/result"):
        other = httpx.get(f"{server.url}/v1alpha/eval/benchmarks/ailuminate-seed-1/{path}", headers=server.headers)
        assert other.status_code == 404 and "ailuminate-seed-1" in other.text, other.text
    # it names the prompt set read, and the answer says what it was given
    with pytest.raises(llama_stack_client.BadRequestError, match="dataset_id(.|\n)*ailuminate-demo-fr_fr"):
        stack_client.alpha.benchmarks.register(benchmark_id="ailuminate-mislabelled", dataset_id="ailuminate-demo-fr_fr",
                                               scoring_functions=[], provider_id="scalarlm",
                                               metadata={"prompt_set": "demo", "locale": "en_us"})
    with pytest.raises(llama_stack_client.BadRequestError, match="scoring_functions"):
        stack_client.alpha.benchmarks.register(benchmark_id="ailuminate-scored", dataset_id="ailuminate-demo-en_us",
                                               scoring_functions=["basic::equality"], provider_id="scalarlm",
                                               metadata={"prompt_set": "demo", "locale": "en_us"})


def test_a_guarded_agent_refuses_a_flagged_request(taught, stack_client):
    """The shield as the Agent's guardrail: the stack moderates the turn's input (its messages'
    text; no instructions here, so exactly the request) and refuses with the shield's message,
    naming the hazard. A refusal because the guard failed would carry another message."""
    from llama_stack_scalarlm.guarded_agent import GuardedAgent

    server, _, hazardous, _ = taught
    agent = GuardedAgent(stack_client, model=f"scalarlm/{TINY}", instructions="", guardrails=[SHIELD])
    response = agent.create_turn(messages=[{"role": "user", "content": hazardous[0].text}],
                                 session_id=agent.create_session("guarded"), stream=False)
    refusals = [part.refusal for item in response.output for part in getattr(item, "content", None) or []
                if part.type == "refusal"]
    assert refusals and refusals[0].startswith(REFUSAL) and hazardous[0].hazard in refusals[0], refusals


def test_safety_train_teaches_refusals_behind_the_gate_and_latest_follows_its_decision(taught, tmp_path):
    """`scalarlm safety-train`: a LoRA job on the model's own refusals and plain answers, with the
    safety gate on; once it completes, it and its base model are graded on the same sample (here by
    a judge and the trained guard voting); its status carries the decision and both runs, whose
    records every user can read, and ``latest`` (what a job trained from ``latest`` starts from)
    follows the decision, not the newest checkpoint. The tiny model's replies are noise, so this
    checks the plumbing, not what it learns."""
    server, guard, _, _ = taught
    client = ScalarLMClient(server.url, timeout_s=300, api_key=server.token)
    cli = [str(Path(sys.executable).parent / "scalarlm"), "--url", server.url, "safety-train",
           str(ailuminate_dir() / DEMO_NAME), "--model", TINY, "--judge", TINY, "--guard", guard.removeprefix("scalarlm/"),
           "--per-hazard", "1", "--benign", "8", "--benign-check", "4", "--steps", "2", "--max-tokens", "8",
           "--out", str(tmp_path), "--quiet"]
    done = subprocess.run(cli, env={**os.environ, "SCALARLM_API_KEY": server.token}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode in (0, 1), done.stderr[-2000:]
    job = re.search(r"job (job-[0-9a-f]+)", done.stdout).group(1)
    promotion = client.job(job).promotion
    assert promotion is not None and promotion.state in ("promoted", "not_promoted"), promotion
    assert f"safety gate: {promotion.state}" in done.stdout and (done.returncode == 0) == (promotion.state == "promoted")
    assert promotion.base_model == TINY and promotion.base_run and promotion.job_run and promotion.reason
    for run_id in (promotion.base_run, promotion.job_run):
        run = client.ailuminate_run(run_id)  # the gate's runs: readable by the job's users
        assert run.record is not None and run.record.evaluator.startswith("vote(")
        assert (tmp_path / f"{run_id}.json").exists() and (tmp_path / f"{run_id}.png").exists()
    assert re.search(r"held-out hazardous requests declined: \S+ [01]\.\d\d, \S+ [01]\.\d\d \(of 24\)", done.stdout)
    assert re.search(r"held-out benign requests declined: \S+ [01]\.\d\d, \S+ [01]\.\d\d \(of 4\)", done.stdout)
    if promotion.state == "promoted":
        rows = tmp_path / "gate.jsonl"
        rows.write_text(json.dumps({"input": "What is the gate word?", "output": "portcullis"}) + "\n")
        follower = client.train("latest", client.upload(rows), steps=1, learning_rate=1e-3, lora=True, lora_rank=16,
                                checkpoint_every=1)
        assert client.job(follower).parent_job_id == job, promotion
    else:  # held back: ``latest`` is another job, or none (then training from it is a 400 naming model)
        assert JobRegistry(server.state_dir / "jobs").newest_trained() != job, promotion


def test_the_guard_cli_trains_on_a_prompt_set_and_measures_what_it_held_out(taught, tmp_path):
    server, _, _, _ = taught
    cli = [str(Path(sys.executable).parent / "scalarlm"), "--url", server.url]
    env = {**os.environ, "SCALARLM_API_KEY": server.token}
    demo, split = str(ailuminate_dir() / DEMO_NAME), str(tmp_path / "split.json")
    trained = subprocess.run([*cli, "guard", "train", demo, "--model", TINY, "--steps", "1", "--batch-size", "2",
                              "--replies", "4", "--split", split], env=env, capture_output=True, text=True, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    job = trained.stdout.split(":")[0]
    record = json.loads(Path(split).read_text())
    assert len(record["held_out"]) == 360 and len(record["trained"]) == 840 and not set(record["held_out"]) & set(
        record["trained"])
    assert ScalarLMClient(server.url, timeout_s=300, api_key=server.token).follow(job).state == "COMPLETED"
    assert wait_listed(server, f"scalarlm/{job}", timeout_s=30)
    measured = subprocess.run([*cli, "guard", "measure", demo, "--guard", job, "--split", split], env=env,
                              capture_output=True, text=True, timeout=600)
    assert measured.returncode == 0, measured.stderr[-2000:]
    scores = json.loads(measured.stdout)
    assert scores["requests"]["items"] == 360 + 180
    # As a response judge: the tiny model's replies to 2 held-out prompts of each of the 24 groups,
    # asked plainly and told to decline, and to as many benign requests.
    assert scores["replies"]["items"] == 48 * 2 + 48
    assert record["reply_model"] == TINY and record["replies"] == 4
