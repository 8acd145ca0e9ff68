"""``inline::scalarlm`` eval: Llama Stack 0.7's eval API over ScalarLM's AILuminate runs."""

from llama_stack_scalarlm.config import ScalarLMConfig


async def get_provider_impl(config: ScalarLMConfig, _deps):
    from .scalarlm import ScalarLMEvalProvider

    return ScalarLMEvalProvider(config)
