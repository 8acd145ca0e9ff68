# The README's two commands: `make demo` (the main job, end to end on CPU) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup demo test bench suite suite-tools suite-safety clean

setup:
	bash scripts/setup-env.sh

demo: setup
	$(PY) scripts/demo.py

test: setup
	$(PY) -m pytest -v -rs --durations=40

# Each bench writes its section of bench/out/results.json (the README's figures); the last line prints them all.
bench: setup
	$(PY) bench/queue_bench.py
	$(PY) bench/full_path_bench.py
	$(PY) bench/full_path_bench.py --model SmolLM2-135M-Instruct --prompts 64 --max-tokens 32
	$(PY) bench/trainer_bench.py
	$(PY) bench/trainer_bench.py --model SmolLM2-135M-Instruct
	$(PY) bench/upload_bench.py
	$(PY) bench/hot_pickup_bench.py
	$(PY) bench/hot_pickup_bench.py --spare-engine always
	$(PY) bench/tool_calls_bench.py
	$(PY) bench/adapter_churn_bench.py
	$(PY) bench/loop_bench.py --pairs 2
	$(PY) bench/safety_bench.py
	$(PY) bench/harness.py

# Llama Stack v0.7.1's own inference integration tests, live against the distribution.
suite: setup
	bash scripts/llama-stack-suite.sh

# The same against SmolLM2 taught to call tools by the platform first (SLURM; ~12 min of training on 2 cores).
suite-tools: setup
	TOOLS=1 bash scripts/llama-stack-suite.sh

# Its safety tests against the default shield, judged by a guard the platform trains first (SLURM; ~15 min on 2 cores).
suite-safety: setup
	SAFETY=1 bash scripts/llama-stack-suite.sh

clean:
	rm -rf .state
