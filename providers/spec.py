"""The one way every ScalarLM provider is declared: ``inline::scalarlm`` for its API, configured by
ScalarLM's one config. The stack imports ``<module>.provider`` for each run-config entry that names
a ``module:`` and calls its ``get_provider_spec()``; building a spec has no side effects.
"""

from llama_stack_api import Api, InlineProviderSpec


def scalarlm_provider_spec(api: Api, package: str, description: str, dependencies: list[Api] = ()) -> InlineProviderSpec:
    return InlineProviderSpec(
        api=api,
        provider_type="inline::scalarlm",
        module=f"llama_stack_scalarlm.providers.{package}",
        config_class=f"llama_stack_scalarlm.providers.{package}.config.ScalarLMConfig",
        api_dependencies=list(dependencies),
        description=description,
    )
