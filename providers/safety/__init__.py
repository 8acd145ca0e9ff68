"""``inline::scalarlm`` safety: shields and moderations judged by a guard model ScalarLM serves."""

from llama_stack_scalarlm.config import ScalarLMConfig


async def get_provider_impl(config: ScalarLMConfig, _deps):
    from .scalarlm import ScalarLMSafetyProvider

    return ScalarLMSafetyProvider(config)
