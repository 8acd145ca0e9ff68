"""``inline::scalarlm`` post_training: Llama Stack 0.6's post_training API over ScalarLM's SLURM trainer."""

from llama_stack_api import Api

from llama_stack_scalarlm.config import ScalarLMConfig


async def get_provider_impl(config: ScalarLMConfig, deps):
    from .scalarlm import ScalarLMPostTrainingProvider

    return ScalarLMPostTrainingProvider(config, deps[Api.datasetio])
