from llama_stack_api import Api

from ..spec import scalarlm_provider_spec


def get_provider_spec():
    return scalarlm_provider_spec(
        Api.safety, "safety",
        "ScalarLM: shields over the AILuminate hazards, judged by a guard model served through ScalarLM's queue.",
    )
