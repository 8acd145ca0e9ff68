"""The provider's configuration: ScalarLM's one typed config (every key in the README), filled from
the run config's ``config:`` block over ``SCALARLM_*`` environment variables."""

from llama_stack_scalarlm.config import ScalarLMConfig

__all__ = ["ScalarLMConfig"]
