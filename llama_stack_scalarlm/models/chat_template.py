"""Which chat template renders a model's conversations with tools: one answer for the engine that
serves the model and the trainer that teaches it, so a model is trained on exactly the text it is
later prompted with."""

from __future__ import annotations

import json
from pathlib import Path

_TEMPLATES = Path(__file__).parent / "templates"


def tools_template(model_path: Path) -> str | None:
    """``None`` when the model's own chat template renders tools; else a template that is its own
    for conversations without tools and, for those with tools, the ChatML tool template this
    project ships (SmolLM2's own has no tools)."""
    own = model_path / "chat_template.jinja"
    text = own.read_text() if own.exists() else json.loads(
        (model_path / "tokenizer_config.json").read_text()).get("chat_template") or ""
    if not isinstance(text, str) or "tools" in text:  # several named templates: vLLM picks among them
        return None
    ours = (_TEMPLATES / "chatml_tools.jinja").read_text()
    return "{%- if tools -%}" + ours + "{%- else -%}" + text + "{%- endif -%}" if text else ours


def tool_support(model_path: Path, tool_parser: str) -> tuple[str | None, str]:
    """The chat template and vLLM tool parser to serve a model with: the configured parser for a
    model whose own template renders tools, else ours with vLLM's hermes parser, which reads the
    calls our template teaches."""
    template = tools_template(model_path)
    return template, tool_parser if template is None else "hermes"
