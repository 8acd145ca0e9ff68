"""OpenAI chat and completions, served by vLLM's own OpenAI layer over the worker's engine.

vLLM's serving classes do what its OpenAI server does: render the chat template with the
request's tools, constrain decoding (``response_format``, guided choice, and for tools xgrammar's
structural tag, so a call's arguments match its schema), parse tool calls with the model's tool
parser, compute log-probabilities, stream OpenAI chunks. We hand them the request body as the
client sent it and carry their answer back through the queue unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..models.chat_template import tool_support
from ..queue.schema import GenerationResult, OpenAIRequest, RequestError

EmitChunks = Callable[[list[dict]], None]
# Whoever asks for tools gets a call whose arguments validate against the tool's schema, with
# tool_choice auto too: xgrammar's structural tag pins them as soon as the model opens a call.
_TOOL_STRICT_LEVEL = "parameter"


class OpenAILayer:
    def __init__(self, engine, model_name: str, model_path: Path, tool_parser: str, default_max_tokens: int | None):
        from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
        from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion
        from vllm.entrypoints.openai.models.protocol import BaseModelPath
        from vllm.entrypoints.openai.models.serving import OpenAIServingModels
        from vllm.renderers.online_renderer import OnlineRenderer

        self.base_name = model_name
        self.default_max_tokens = default_max_tokens
        template, parser = tool_support(model_path, tool_parser)
        self.models = OpenAIServingModels(engine_client=engine,
                                          base_model_paths=[BaseModelPath(name=model_name, model_path=str(model_path))])
        tools = dict(chat_template=template, chat_template_content_format="auto", enable_auto_tools=True,
                     tool_parser=parser, tool_strict_level=_TOOL_STRICT_LEVEL)
        renderer = OnlineRenderer(model_config=engine.model_config, renderer=engine.renderer, request_logger=None,
                                  **tools)
        self.chat = OpenAIServingChat(engine_client=engine, models=self.models, response_role="assistant",
                                      online_renderer=renderer, request_logger=None, **tools)
        self.completion = OpenAIServingCompletion(engine, self.models, online_renderer=renderer, request_logger=None)

    def serve_adapter(self, name: str, lora) -> None:
        """``lora``: the adapter now loaded for job ``name``, or None once it is unloaded."""
        if lora is None:
            self.models.lora_requests.pop(name, None)
        else:
            self.models.lora_requests[name] = lora

    @staticmethod
    def parse(request: OpenAIRequest):
        """vLLM's typed request, or the field it refuses (a 400 naming it; unknown fields too)."""
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest
        from vllm.exceptions import VLLMClientError

        kind = ChatCompletionRequest if request.kind == "openai.chat" else CompletionRequest
        try:
            parsed = kind.model_validate(request.body)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(p) for p in error["loc"]) or "request"
            return RequestError(field=field, message=f"{field}: {error['msg']}")
        except VLLMClientError as exc:  # vLLM's own validators raise past pydantic
            return _client_error(exc, request.kind)
        if unknown := sorted(parsed.model_extra or {}):
            return RequestError(field=unknown[0], message=f"{unknown[0]}: not a field this server knows")
        return parsed

    async def run(self, request: OpenAIRequest, request_id: str, emit: EmitChunks) -> GenerationResult:
        from vllm.exceptions import VLLMClientError

        parsed = self.parse(request)
        if isinstance(parsed, RequestError):
            return GenerationResult(error=parsed)
        # The adapter's name if this worker holds it as one; else the engine's model (a full
        # fine-tune's engine serves the job under the job's id, whatever vLLM was started as).
        parsed.model = request.model if request.model in self.models.lora_requests else self.base_name
        parsed.request_id = request_id
        # A chat that sets no bound gets the operator's (completions default to 16 tokens, as OpenAI's).
        if request.kind == "openai.chat" and parsed.max_tokens is None and parsed.max_completion_tokens is None:
            parsed.max_tokens = self.default_max_tokens
        serve = self.chat.create_chat_completion if request.kind == "openai.chat" else self.completion.create_completion
        try:
            answer = await serve(parsed, None)
        except VLLMClientError as exc:
            return GenerationResult(error=_client_error(exc, request.kind))
        except (ValueError, TypeError) as exc:  # a template or a parser refusing the input
            return GenerationResult(error=RequestError(message=str(exc)))
        if hasattr(answer, "error") and not hasattr(answer, "choices"):
            return GenerationResult(error=_error(answer.error))
        if not request.stream:
            body = answer.model_dump(mode="json", exclude_none=True)
            usage = body.get("usage") or {}
            return GenerationResult(response=body, prompt_tokens=usage.get("prompt_tokens", 0))
        async for event in answer:
            chunks = []
            for line in event.splitlines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if "error" in data:
                    return GenerationResult(error=_error(data["error"]))
                chunks.append(data)
            if chunks:
                emit(chunks)
        return GenerationResult()


def _client_error(exc, kind: str) -> RequestError:
    """A vLLM client error as a 400 naming the client's field; vLLM names a prompt too long for the
    context "input_tokens", which the client sent as its messages or prompt."""
    field = getattr(exc, "parameter", None)
    if field == "input_tokens":
        field = "messages" if kind == "openai.chat" else "prompt"
    return RequestError(field=field, message=f"{field}: {exc}" if field else str(exc))


def _error(error) -> RequestError:
    """vLLM's ErrorResponse (or its streamed error object) as the queue's error."""
    if not isinstance(error, dict):
        error = error.model_dump()
    field = error.get("param")
    status = int(error.get("code") or 400)
    message = error.get("message") or "request refused"
    return RequestError(status=status, field=field, message=f"{field}: {message}" if field else message)
