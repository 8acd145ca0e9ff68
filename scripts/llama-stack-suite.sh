#!/usr/bin/env bash
# Llama Stack v0.7.1's own inference tests, live against `llama stack run` on loopback, with a
# throwaway state root. The suite's OpenAI client sends the fixed key "fake" (its fixtures/common.py),
# so that key is granted here, in this state root only; its llama-stack-client sends our token.
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=${SUITE:-../shared/bin/llama-stack-suite}
PORT=${PORT:-8399}
MODEL=${MODEL:-scalarlm/SmolLM2-135M-Instruct}
export SCALARLM_STATE_DIR=${SCALARLM_STATE_DIR:-$(mktemp -d)/state}
mkdir -p "$SCALARLM_STATE_DIR"
token=$(.venv/bin/scalarlm token create --name suite)
printf fake | .venv/bin/scalarlm token add suite-openai-client >/dev/null
LLAMA_STACK_PORT=$PORT .venv/bin/llama stack run distributions/scalarlm/run.yaml >"$SCALARLM_STATE_DIR/server.log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for i in $(seq 300); do  # until an engine serves the model (the server answers the token check on this port)
  curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/v1/scalarlm/queue" | grep -q '"workers":{"' && break
  [ "$i" -lt 300 ] || { tail -20 "$SCALARLM_STATE_DIR/server.log"; echo "no engine came up in 300 s" >&2; exit 1; }
  sleep 1
done
[ $# -gt 0 ] || set -- tests/integration/inference/test_openai_completion.py tests/integration/inference/test_tools_with_schemas.py
"$SUITE" "http://127.0.0.1:$PORT" "$MODEL" --token "$token" "$@"
