from llama_stack_api import Api

from ..spec import scalarlm_provider_spec


def get_provider_spec():
    return scalarlm_provider_spec(
        Api.add("post_training"), "post_training",
        "ScalarLM training: supervised fine-tuning (full or LoRA) and preference optimization as jobs on the "
        "cluster that serves the models; trained weights are served without a restart.",
        dependencies=[Api.datasetio],
    )
