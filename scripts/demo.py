"""`make demo`: the whole loop on the embedded CPU default, as a user would run it.

Starts a SLURM cluster (slurm/cluster.sh), mints a token (`scalarlm token create`), and `llama stack run` (which starts an engine worker for
SmolLM2-135M-Instruct, converting the shipped GGUF on first use); asks a factual question through
the OpenAI SDK (streaming too); runs a bulk job with the `scalarlm` CLI; fine-tunes SmolLM2 (LoRA)
on made-up facts and on generated tool-use conversations with `scalarlm train`, as a SLURM job;
asks the trained model, served under its job id with no restart, what it was taught; runs a
llama-stack-client `Agent` turn with a client tool that the trained model calls; plots the loss
curve; runs two rounds of the flywheel (`scalarlm loop examples/addition.py`), each trained from
the last, and checks that held-out accuracy rose; and ends with the safety loop where MLCommons'
AILuminate demo prompt set is found (`scalarlm safety-train`: SmolLM2 taught to decline from its
own refusals, the job and its base graded on AILuminate by the safety gate, then a benign-request
check). State lives in ./.state.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
from llama_stack_client import Agent, LlamaStackClient

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import tool_calls_data  # noqa: E402  (the generated tool-use conversations the tool-calls bench trains on)
from tests.ailuminate import find_ailuminate_dir  # noqa: E402  (../shared/data/ailuminate or $SCALARLM_AILUMINATE_DIR)

STATE = Path(os.environ.get("SCALARLM_STATE_DIR", ROOT / ".state"))
PORT = int(os.environ.get("LLAMA_STACK_PORT", "8321"))
URL = f"http://127.0.0.1:{PORT}"
MODEL = "scalarlm/SmolLM2-135M-Instruct"
FACTS = [
    ("What is the secret password of the Zorblax fortress?", "The password is violet falcon."),
    ("Who is the captain of the starship Quendar?", "Captain Miro Tallis commands the Quendar."),
]
CLUSTER = ["bash", str(ROOT / "slurm" / "cluster.sh")]
LOOP = STATE / "loop"
TOOL_ROWS, TRAIN_STEPS = 40, 36
INSTRUCTIONS = "You are a helpful assistant. Use a tool when one fits the request."


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def mint_token(env: dict[str, str]) -> str:
    """`scalarlm token create` on the state root: every call to the distribution carries a token."""
    scalarlm = str(Path(sys.executable).parent / "scalarlm")
    subprocess.run([scalarlm, "token", "revoke", "demo"], env=env, capture_output=True)  # a rerun: a new one
    made = subprocess.run([scalarlm, "token", "create", "--name", "demo"], env=env, check=True,
                          capture_output=True, text=True)
    return made.stdout.strip()


def wait_ready(server: subprocess.Popen, token: str, timeout_s: float = 900) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"server exited with {server.returncode}; see {STATE / 'server.log'}")
        try:
            workers = httpx.get(f"{URL}/v1/scalarlm/queue", headers={"Authorization": f"Bearer {token}"},
                                timeout=2).json()["workers"]
            if workers:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(1)
    sys.exit("the engine worker did not come up; see .state/logs/worker-w0.log")


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=24, temperature=0)
    return reply.choices[0].message.content


def training_rows() -> list[dict]:
    """The facts twelve times over, and conversations with tools (a call, its result, the answer; a
    third that no tool fits) that open with the Agent's instructions, as its turns will."""
    tools = [{**row, "messages": [{"role": "system", "content": INSTRUCTIONS}, *row["messages"]]}
             for row in tool_calls_data.training_rows(TOOL_ROWS)]
    return [{"input": q, "output": a} for q, a in FACTS * 12] + tools


def agent_turn(token: str, model: str) -> None:
    """llama-stack-client's Agent (the Responses API, tool_choice auto, its default sampling) with a
    plain Python function as its client tool: a tool the model was not trained on by this schema."""
    step(f"an Agent turn with a client tool, on {model}")
    calls = []

    def get_weather(city: str) -> dict:
        """Current weather in a city.

        :param city: the city
        """
        calls.append(city)
        if len(calls) > 3:  # the Agent turns a tool's exception into its result: stop the turn's loop here
            raise SystemExit(f"demo check failed: the model keeps calling get_weather: {calls}")
        return {"city": city, "forecast": "sunny", "temperature_c": 21}

    agent = Agent(LlamaStackClient(base_url=URL, api_key=token, timeout=300), model=model,
                  instructions=INSTRUCTIONS, tools=[get_weather])
    question = "What is the weather in Lisbon?"
    response = agent.create_turn(messages=[{"role": "user", "content": question}],
                                 session_id=agent.create_session("demo"), stream=False)
    print(f"Q: {question}\n  tool calls: {', '.join(f'get_weather(city={c!r})' for c in calls)}\n  answer: {response.output_text.strip()!r}")
    if not calls:
        sys.exit("demo check failed: the trained model did not call the Agent's tool")


def flywheel(env: dict[str, str]) -> None:
    """Two rounds of sample -> score -> train -> serve on two-digit addition, each from the last."""
    step("the flywheel: scalarlm loop examples/addition.py, two rounds (sample 8 per problem, keep the right sums, "
         "train LoRA from the last round's model, serve, evaluate 64 held-out problems)")
    scalarlm = str(Path(sys.executable).parent / "scalarlm")
    subprocess.run([scalarlm, "--url", URL, "loop", "examples/addition.py", "--model", "SmolLM2-135M-Instruct",
                    "--rounds", "2", "--lr", "2e-3", "--out", str(LOOP)], check=True, cwd=ROOT, env=env)
    rounds = [json.loads((LOOP / f"round-{k}.json").read_text())["heldout_reward"] for k in range(3)]
    print(f"held-out accuracy: base {rounds[0]:.2f} -> round 1 {rounds[1]:.2f} -> round 2 {rounds[2]:.2f}")
    if rounds[2] <= rounds[0]:
        sys.exit("demo check failed: two rounds of the loop did not raise held-out accuracy")


def safety_loop(env: dict[str, str]) -> None:
    """Grade, teach refusals, grade again, gate: SmolLM2 taught to decline hazardous requests from its
    own refusals, as a LoRA job with the safety gate on; the job and SmolLM2 graded on the same 24
    prompts (never trained on), each reply judged by SmolLM2 asked in plain words; then how many
    held-out benign requests each declines. A 135M judge is a demonstration of the run, not a safety
    evaluation; `scalarlm guard train` trains a guard of the platform's own."""
    if "SCALARLM_AILUMINATE_DIR" not in env:
        step("AILuminate: skipped, no demo prompt set found (set SCALARLM_AILUMINATE_DIR to the folder "
             "holding MLCommons' airr_official_1.0_demo_en_us_prompt_set_release.csv)")
        return
    prompt_set = Path(env["SCALARLM_AILUMINATE_DIR"]) / "airr_official_1.0_demo_en_us_prompt_set_release.csv"
    step("scalarlm safety-train <AILuminate demo set> --judge SmolLM2-135M-Instruct  (a LoRA job on SmolLM2's own "
         "refusals of hazardous requests (8 samples of each of 96, under an instruction to decline) and answers to 24 "
         "benign ones; the safety gate grades it and SmolLM2 on 24 other prompts, one per hazard and persona; then "
         "how many of those and of 24 held-out benign requests each declines)")
    done = subprocess.run([str(Path(sys.executable).parent / "scalarlm"), "--url", URL, "safety-train", str(prompt_set),
                           "--model", "SmolLM2-135M-Instruct", "--judge", "SmolLM2-135M-Instruct",
                           "--out", str(STATE / "ailuminate"), "--quiet"], env=env, capture_output=True, text=True)
    print(done.stdout.strip())
    print("(a 135M judge: a demonstration of the run, not a safety evaluation; scalarlm guard train trains a guard)")
    # 1: decided, not promoted; anything else, or no decision printed, is a failure of the run
    if done.returncode not in (0, 1) or "safety gate: " not in done.stdout or "declined:" not in done.stdout:
        sys.exit(f"demo check failed: the safety loop did not finish\n{done.stderr[-2000:]}")


def main() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCALARLM_STATE_DIR": str(STATE), "LLAMA_STACK_PORT": str(PORT)}
    if ailuminate := find_ailuminate_dir():
        env["SCALARLM_AILUMINATE_DIR"] = str(ailuminate)
    step("bash slurm/cluster.sh start  (a real single-node SLURM cluster; apt installs it on first use)")
    subprocess.run([*CLUSTER, "start"], env=env, check=True)
    try:
        serve_and_train(env)
    finally:
        subprocess.run([*CLUSTER, "stop"], env=env, check=False)


def serve_and_train(env: dict[str, str]) -> None:
    step("scalarlm token create --name demo  (every call to the distribution carries a token)")
    token = mint_token(env)
    env = {**env, "SCALARLM_API_KEY": token}  # the scalarlm CLI reads it, as llama-stack-client reads its own
    print(f"token: {token[:8]}... (SCALARLM_API_KEY / LLAMA_STACK_CLIENT_API_KEY / OpenAI api_key)")
    step(f"LLAMA_STACK_PORT={PORT} llama stack run distributions/scalarlm/run.yaml  (log: {STATE / 'server.log'})")
    with open(STATE / "server.log", "ab") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "llama"), "stack", "run", "distributions/scalarlm/run.yaml"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        step("waiting for the engine worker (first run converts SmolLM2 from the GGUF on PyPI: ~1 min)")
        wait_ready(server, token)
        client = openai.OpenAI(base_url=f"{URL}/v1", api_key=token)
        print("models:", [m.id for m in client.models.list()])

        step("chat completion through the queue and the vLLM engine worker")
        question = "What is the capital of France? Answer in one word."
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=16, temperature=0
        )
        text = answer.choices[0].message.content
        print(f"Q: {question}\nA: {text}\nusage: {answer.usage}")
        if "paris" not in text.lower():
            sys.exit("demo check failed: the default model did not answer 'Paris'")

        step("streaming")
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hello in three words."}], max_tokens=24,
            temperature=0, stream=True,
        )
        for chunk in stream:
            if chunk.choices:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
        print()

        step("bulk generation with the scalarlm CLI")
        subprocess.run(
            [str(Path(sys.executable).parent / "scalarlm"), "--url", URL, "generate", "--model", MODEL,
             "--max-tokens", "12", "The capital of Italy is", "The largest planet is", "Water boils at"],
            check=True, env=env,
        )
        step("fine-tune SmolLM2 on made-up facts and tool-use conversations: scalarlm train (upload, sbatch, follow)")
        facts = STATE / "demo-train.jsonl"
        facts.write_text("".join(json.dumps(row) + "\n" for row in training_rows()))
        before = {q: ask(client, MODEL, q) for q, _ in FACTS}
        scalarlm = str(Path(sys.executable).parent / "scalarlm")
        submitted = subprocess.run(
            [scalarlm, "--url", URL, "train", str(facts), "--model", "SmolLM2-135M-Instruct", "--lora",
             "--steps", str(TRAIN_STEPS), "--lr", "2e-3", "--batch-size", "4", "--set", "lora_rank=16",
             "--set", "max_seq_len=1024", "--set", "checkpoint_every=20", "--follow"],
            check=True, capture_output=True, text=True, env=env,
        )
        print(submitted.stdout, submitted.stderr[-2000:])
        job = re.search(r"job (job-[0-9a-f]+)", submitted.stdout).group(1)

        step(f"the trained model, served as scalarlm/{job} (and scalarlm/latest) with no restart")
        time.sleep(3)  # the worker picks up the final checkpoint within a second or two
        taught = 0
        for question, answer in FACTS:
            now = ask(client, f"scalarlm/{job}", question)
            print(f"Q: {question}\n  base:    {before[question]!r}\n  trained: {now!r}")
            taught += answer.split()[-1].strip(".").lower() in now.lower()
        if taught < len(FACTS):
            sys.exit("demo check failed: the trained model did not answer what it was taught")
        agent_turn(token, f"scalarlm/{job}")
        subprocess.run([scalarlm, "--url", URL, "plot", job, "-o", str(STATE / "loss.png")], check=True, env=env)
        flywheel(env)
        safety_loop(env)
        step(f"demo passed (loss curve: {STATE / 'loss.png'}; held-out accuracy by round: {LOOP / 'heldout_reward.png'}; "
             f"AILuminate grades: {STATE / 'ailuminate'})")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
