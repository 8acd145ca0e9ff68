import os
from pathlib import Path

import pytest

from .slurm_fixtures import slurm_cluster  # noqa: F401  (a session fixture: one SLURM cluster for all tests)
from .stack import StackServer

TINY = "tiny-llama"
SMOL = "SmolLM2-135M-Instruct"
DEFAULT_MAX_TOKENS = 256  # the inference server's bound on a chat that sets none (engine.default_max_tokens)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# vLLM inspects a model class in a subprocess (~9 s on 2 cores) unless its cache holds the answer.
# Each test server has a state root of its own, so each would pay it: share one cache for the run.
os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "vllm"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The tiny model's Hugging Face directory, built locally, for tests that run the trainer directly."""
    from llama_stack_scalarlm.models.builtin import build_tiny_llama

    out = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(out)
    return out


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One distribution for the inference tests: a worker for the tiny model and one for SmolLM2."""
    stack = StackServer(tmp_path_factory.mktemp("stack"), served_models=[TINY, SMOL], workers=2,
                        engine={"default_max_tokens": DEFAULT_MAX_TOKENS})
    stack.start(wait_for_workers=2, timeout_s=600)
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def slurm_stack(slurm_cluster):
    """A distribution on the SLURM cluster's state root (the tiny model, one worker, the AILuminate
    files when there are any), as a head node runs it: the API fuzz and the safety tests share it,
    and the safety module, its last user, stops it."""
    from .ailuminate import find_ailuminate_dir

    found = find_ailuminate_dir()
    server = StackServer(slurm_cluster.state_dir, served_models=[TINY], workers=1, limits={"request_timeout_s": 60},
                         **({"ailuminate_dir": str(found)} if found else {}))
    server.start(wait_for_workers=1, timeout_s=600)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(server):
    return f"scalarlm/{TINY}"


@pytest.fixture(scope="session")
def smol_model(server):
    return f"scalarlm/{SMOL}"


@pytest.fixture(scope="session")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, timeout=300)


@pytest.fixture(scope="session")
def tiny_tokenizer(server):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(server.state_dir / "models" / TINY)
