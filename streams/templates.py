"""Templates: a plain event rendered into a request body in the shape of the pipeline's
endpoint, by that endpoint's :class:`~streams.kinds.RequestFormat` (each kind folder's
``formats.py``: OpenAI's chat, responses and embeddings, Anthropic's Messages, Gemini's
generateContent). Pure."""

from __future__ import annotations

from typing import Any

import orjson

from streams.config import PipelineSettings
from streams.kinds import Prompt, RequestFormat


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def render_body(cfg: PipelineSettings, event: dict[str, Any], fmt: RequestFormat | None = None) -> dict[str, Any]:
    """The request body of a plain event (KeyError: a template field the event lacks), in
    ``fmt`` (the pipeline's request format unless given)."""
    template = cfg.template
    fields = _Missing(event)
    user = template.user.format_map(fields) if template.user else orjson.dumps(event).decode()
    prompt = Prompt(
        model=cfg.model, user=user, system_template=template.system, fields=fields,
        response_format=template.response_format, parameters=template.parameters, max_tokens=cfg.max_tokens,
    )  # fmt: skip
    return (fmt or cfg.request_format).render(prompt)
