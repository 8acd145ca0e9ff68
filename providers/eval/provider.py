from llama_stack_api import Api

from ..spec import scalarlm_provider_spec


def get_provider_spec():
    return scalarlm_provider_spec(
        Api.eval, "eval",
        "ScalarLM: MLCommons AILuminate on any served model, graded per hazard (benchmarks from the run config).",
    )
