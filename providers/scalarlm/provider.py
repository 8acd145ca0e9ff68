from llama_stack_api import Api

from ..spec import scalarlm_provider_spec


def get_provider_spec():
    return scalarlm_provider_spec(
        Api.add("scalarlm"), "scalarlm",
        "ScalarLM's own API: bulk generation, uploads, training status, token checks, and the engine workers' protocol.",
    )
