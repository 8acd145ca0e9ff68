from llama_stack_api import Api

from ..spec import scalarlm_provider_spec


def get_provider_spec():
    return scalarlm_provider_spec(
        Api.inference, "inference",
        "ScalarLM: requests go through a durable queue to vLLM engine workers (CPU or GPU).",
    )
