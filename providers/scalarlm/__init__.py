"""``inline::scalarlm`` for the ``scalarlm`` API: bulk generation, uploads, training status, token
checks, and the engine workers' protocol."""

from llama_stack_scalarlm.config import ScalarLMConfig


async def get_provider_impl(config: ScalarLMConfig, _deps):
    from .scalarlm import ScalarLMProvider

    return ScalarLMProvider(config)
