"""`make demo`: start the distribution on the embedded CPU default and use it as a user would.

Starts `llama stack run` (which starts an engine worker for SmolLM2-135M-Instruct, converting the
shipped GGUF on first use), asks a factual question through the OpenAI SDK (streaming too), runs a
bulk job through the `scalarlm` CLI, and stops the server. State lives in ./.state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("SCALARLM_STATE_DIR", ROOT / ".state"))
PORT = int(os.environ.get("LLAMA_STACK_PORT", "8321"))
URL = f"http://127.0.0.1:{PORT}"
MODEL = "scalarlm/SmolLM2-135M-Instruct"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def wait_ready(server: subprocess.Popen, timeout_s: float = 900) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if server.poll() is not None:
            sys.exit(f"server exited with {server.returncode}; see {STATE / 'server.log'}")
        try:
            workers = httpx.get(f"{URL}/v1/scalarlm/queue", timeout=2).json()["workers"]
            if workers:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(1)
    sys.exit("the engine worker did not come up; see .state/logs/worker-0.log")


def main() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCALARLM_STATE_DIR": str(STATE)}
    step(f"llama stack run distributions/scalarlm/run.yaml --port {PORT}  (log: {STATE / 'server.log'})")
    with open(STATE / "server.log", "ab") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "llama"), "stack", "run", "distributions/scalarlm/run.yaml",
             "--port", str(PORT)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        step("waiting for the engine worker (first run converts SmolLM2 from the GGUF on PyPI: ~1 min)")
        wait_ready(server)
        client = openai.OpenAI(base_url=f"{URL}/v1", api_key="none")
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
            check=True,
        )
        step("demo passed")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
