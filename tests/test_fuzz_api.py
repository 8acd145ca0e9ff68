"""Property-based fuzzing of the distribution's HTTP API (schemathesis over its own OpenAPI document),
against a real `llama stack run` with a tiny-model worker: no input gives a 5xx, and every 4xx
names what was wrong.

Scope: ScalarLM's routes (bulk, uploads, training status, post_training) and the inference routes
its provider answers. Llama Stack's other built-in routes (files, vector stores, responses...) are
upstream's code, not fuzzed here.
"""

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from .conftest import TINY
from .stack import StackServer

OURS = r"^/v1(alpha)?/(scalarlm/|post-training/|chat/completions$|completions$|embeddings$|models)"
EXAMPLES = 25  # per operation: ~25 operations, a few hundred cases in all
_NAMED = re.compile(r'"loc"|\b[a-z_][a-z0-9_.\[\]]*: ')


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    server = StackServer(tmp_path_factory.mktemp("fuzz"), served_models=[TINY], workers=1,
                         limits={"request_timeout_s": 60}).start(wait_for_workers=1, timeout_s=600)
    yield server
    server.stop()


def test_no_input_gives_a_5xx_and_every_4xx_names_the_field(stack, record_property):
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json", headers=stack.headers, timeout=30)
    operations = [result.ok() for result in schema.include(path_regex=OURS).get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    tried, problems = [0], []

    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate], database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case):
            tried[0] += 1
            response = case.call(base_url=stack.url, headers=stack.headers, timeout=120)
            text = response.text
            if response.status_code >= 500:
                problems.append((operation.label, response.status_code, text[:300], case.body))
            elif 400 <= response.status_code < 500 and not _NAMED.search(text):
                problems.append((operation.label, response.status_code, text[:300], case.body))

        fuzz()

    record_property("fuzz_cases", tried[0])
    print(f"\nfuzzed {tried[0]} cases over {len(operations)} operations")
    assert not problems, problems[:10]
