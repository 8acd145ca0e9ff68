"""``inline::scalarlm`` for the ``scalarlm`` API: bulk generation and the engine workers' protocol."""

import logging

from llama_stack_scalarlm.api.scalarlm import PREFIX
from llama_stack_scalarlm.config import ScalarLMConfig


class _WorkerCallsFilter(logging.Filter):
    """Workers lease and report many times a second: logging each call cost the server more CPU
    than serving it (measured with py-spy), and an engine sharing the host runs slower for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (len(args) > 2 and str(args[2]).startswith(f"{PREFIX}/worker/"))


async def get_provider_impl(config: ScalarLMConfig, _deps):
    from .scalarlm import ScalarLMBulkProvider

    logging.getLogger("uvicorn.access").addFilter(_WorkerCallsFilter())
    return ScalarLMBulkProvider(config)
