"""Entry point the stack imports for ``module: llama_stack_scalarlm.providers.inference``.

It is imported while the stack builds its provider registry, before any provider starts, which
makes it the place to prepare what the in-tree providers need offline.
"""

from llama_stack_api import Api, InlineProviderSpec

from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.offline import prepare_tiktoken


def get_provider_spec() -> InlineProviderSpec:
    prepare_tiktoken(ScalarLMConfig.load().state_dir / "cache" / "tiktoken")
    return InlineProviderSpec(
        api=Api.inference,
        provider_type="inline::scalarlm",
        module="llama_stack_scalarlm.providers.inference",
        config_class="llama_stack_scalarlm.config.ScalarLMConfig",
        description="ScalarLM: requests go through a durable queue to vLLM engine workers (CPU or GPU).",
    )
