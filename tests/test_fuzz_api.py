"""Property-based fuzzing of the distribution's HTTP API (schemathesis over its own OpenAPI document),
against a real `llama stack run` with a tiny-model worker: no input gives a 5xx, and every 4xx
names what was wrong.

Scope: ScalarLM's routes (bulk, uploads, training status, post_training) and the inference routes
its provider answers. Llama Stack's other built-in routes (files, vector stores, responses...) are
upstream's code, not fuzzed here.
"""

import json
import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from .conftest import TINY

OURS = r"^/v1(alpha)?/(scalarlm/|post-training/|chat/completions$|completions$|embeddings$|models$)"
STACKS = {("GET", "/v1/chat/completions")}  # the stack's store of past completions, not our provider
EXAMPLES = 25  # per operation: ~25 operations, a few hundred cases in all
_NAMED = re.compile(r"['\"]loc['\"]|" r'\b[a-z_][a-z0-9_.\[\]]*: |Model .* not found')
MODELS = {"/v1/chat/completions": f"scalarlm/{TINY}", "/v1/completions": f"scalarlm/{TINY}"}


@pytest.fixture(scope="module")
def stack(slurm_stack):
    """On the SLURM cluster's state root, so the training routes answer for real (no 503 for SLURM being down)."""
    return slurm_stack


def load_schema(stack):
    """The server's OpenAPI document. The stack's own routes refer to shared error responses
    (``#/components/responses/BadRequest400``...) that its live document leaves out: they are
    added back, as plain descriptions, so the document resolves."""
    document = httpx.get(f"{stack.url}/openapi.json", headers=stack.headers, timeout=30).json()
    missing = set(re.findall(r'"#/components/responses/([^"]+)"', json.dumps(document)))
    responses = document.setdefault("components", {}).setdefault("responses", {})
    for name in missing - set(responses):
        responses[name] = {"description": name}
    return schemathesis.openapi.from_dict(document)


def test_no_input_gives_a_5xx_and_every_4xx_names_the_field(stack, record_property):
    operations = [op for op in (result.ok() for result in load_schema(stack).include(path_regex=OURS).get_all_operations())
                  if (op.method.upper(), op.path) not in STACKS]
    assert len(operations) >= 15, [op.label for op in operations]
    tried, problems = [0], []

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate], database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            """A served model where one is named, so the other fields are what gets tested."""
            tried[0] += 1
            if isinstance(case.body, dict) and "model" in case.body and case.body["model"] != "":
                case.body["model"] = MODELS.get(operation.path, TINY)
            response = case.call(base_url=stack.url, headers=stack.headers, timeout=120)
            text = response.text
            if response.status_code >= 500:
                problems.append((operation.label, response.status_code, text[:300], case.body))
            elif 400 <= response.status_code < 500 and not _NAMED.search(text):
                problems.append((operation.label, response.status_code, text[:300], case.body))

        fuzz()

    record_property("fuzz_cases", tried[0])
    print(f"\nfuzzed {tried[0]} cases over {len(operations)} operations")
    assert not problems, "\n".join(f"{label} {status}: {text[:200]!r}" for label, status, text, _ in problems[:20])
