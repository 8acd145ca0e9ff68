#!/usr/bin/env bash
# Llama Stack v0.7.1's own tests, live against `llama stack run` on loopback, with a throwaway
# state root. The suite's OpenAI client sends the fixed key "fake" (its fixtures/common.py), so
# that key is granted here, in this state root only; its llama-stack-client sends our token.
# The suite's clients wait 30 s and most of its chats set no max_tokens: on a CPU machine a small
# model's reply could run to the end of the context first, so this server bounds such replies at
# 512 tokens (SCALARLM_ENGINE__DEFAULT_MAX_TOKENS; a request's own max_tokens is kept).
# SAFETY=1: the safety tests against the run config's default shield `ailuminate`, judged by a
# guard this script has the platform train first (SLURM, `scalarlm guard train`, GUARD_STEPS steps
# on the AILuminate demo set in AILUMINATE_DIR).
# TOOLS=1: the inference tests against SmolLM2 taught to call tools by the platform first (SLURM,
# a LoRA job on bench/tool_calls_data.py's conversations, as bench/tool_calls_bench.py trains it).
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=${SUITE:-../shared/bin/llama-stack-suite}
PORT=${PORT:-8399}
MODEL=${MODEL:-scalarlm/SmolLM2-135M-Instruct}
export SCALARLM_STATE_DIR=${SCALARLM_STATE_DIR:-$(mktemp -d)/state}
export SCALARLM_ENGINE__DEFAULT_MAX_TOKENS=${SCALARLM_ENGINE__DEFAULT_MAX_TOKENS:-512}
mkdir -p "$SCALARLM_STATE_DIR"
token=$(.venv/bin/scalarlm token create --name suite)
printf fake | .venv/bin/scalarlm token add suite-openai-client >/dev/null
slurm=$([ "${SAFETY:-0}" = 1 ] || [ "${TOOLS:-0}" = 1 ] && echo 1 || echo 0)
cleanup() {
  kill -INT "$server" 2>/dev/null; wait "$server" 2>/dev/null
  [ "$slurm" != 1 ] || bash slurm/cluster.sh stop || true
}
[ "$slurm" != 1 ] || bash slurm/cluster.sh start
LLAMA_STACK_PORT=$PORT .venv/bin/llama stack run distributions/scalarlm/run.yaml >"$SCALARLM_STATE_DIR/server.log" 2>&1 &
server=$!
trap cleanup EXIT
for i in $(seq 300); do  # until an engine serves the model (the server answers the token check on this port)
  curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/v1/scalarlm/queue" | grep -q '"workers":{"' && break
  [ "$i" -lt 300 ] || { tail -20 "$SCALARLM_STATE_DIR/server.log"; echo "no engine came up in 300 s" >&2; exit 1; }
  sleep 1
done
extra=()
cli() { SCALARLM_API_KEY=$token .venv/bin/scalarlm --url "http://127.0.0.1:$PORT" "$@"; }
wait_listed() {  # a trained model is listed once its checkpoint is served
  for i in $(seq 60); do
    curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/v1/models" | grep -q "\"$1\"" && return
    sleep 1
  done
}
if [ "${TOOLS:-0}" = 1 ]; then
  rows=$SCALARLM_STATE_DIR/tool_calls.jsonl
  .venv/bin/python -c "import json, sys; sys.path.insert(0, 'bench'); import tool_calls_data as d
sys.stdout.write(''.join(json.dumps(r) + '\n' for r in d.training_rows(240)))" >"$rows"
  cli train "$rows" --model "${MODEL#scalarlm/}" --lora --steps 60 --batch-size 4 --lr 2e-3 --set lora_rank=16 \
    --set max_seq_len=1024 --set checkpoint_every=60 --follow | tee "$SCALARLM_STATE_DIR/train.out"
  MODEL=scalarlm/$(awk '/^job /{print $2; exit}' "$SCALARLM_STATE_DIR/train.out")
  wait_listed "$MODEL"
  echo "the suite runs against $MODEL"
fi
if [ "${SAFETY:-0}" = 1 ]; then
  demo=${AILUMINATE_DIR:-../shared/data/ailuminate}/airr_official_1.0_demo_en_us_prompt_set_release.csv
  cli guard train "$demo" \
    --steps "${GUARD_STEPS:-40}" --split "$SCALARLM_STATE_DIR/guard-split.json" --follow
  wait_listed scalarlm/guard  # the default shield's model `guard`
  [ $# -gt 0 ] || set -- tests/integration/safety/test_safety.py
  extra=(--shield ailuminate)
fi
[ $# -gt 0 ] || set -- tests/integration/inference/test_openai_completion.py tests/integration/inference/test_tools_with_schemas.py
"$SUITE" "http://127.0.0.1:$PORT" "$MODEL" --token "$token" "${extra[@]}" "$@"
