"""``inline::scalarlm`` inference: OpenAI chat/completions through ScalarLM's queue and engine workers."""

from llama_stack_scalarlm.config import ScalarLMConfig


async def get_provider_impl(config: ScalarLMConfig, _deps):
    from .scalarlm import ScalarLMInferenceProvider

    impl = ScalarLMInferenceProvider(config)
    await impl.initialize()
    return impl
