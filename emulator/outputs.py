"""Deterministic model outputs: the same request always gets the same answer."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def digest(*parts: object) -> int:
    material = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(material, digest_size=8).digest(), "big")


def roll(*parts: object) -> float:
    """A deterministic number in [0, 1)."""
    return digest(*parts) / 2**64


def count_tokens(value: Any) -> int:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return max(1, len(text) // 4)


def instance(schema: dict[str, Any], seed: str, root: dict[str, Any] | None = None) -> Any:
    """A value valid against a (practical subset of) JSON Schema, chosen from ``seed``."""
    root = root if root is not None else schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return instance(target, seed, root)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            return instance(schema[combinator][0], seed, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        options = schema["enum"]
        return options[digest(seed, "enum") % len(options)]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance(sub, f"{seed}.{name}", root) for name, sub in props.items()}
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = max(low, int(schema.get("maxItems", max(low, 2))))
        size = low + digest(seed, "len") % (high - low + 1)
        return [instance(schema.get("items", {}), f"{seed}[{i}]", root) for i in range(size)]
    if kind == "integer":
        low, high = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return low + digest(seed, "int") % (high - low + 1)
    if kind == "number":
        bottom, top = float(schema.get("minimum", 0.0)), float(schema.get("maximum", 1.0))
        return round(bottom + roll(seed, "num") * (top - bottom), 3)
    if kind == "boolean":
        return digest(seed, "bool") % 2 == 0
    if kind == "null":
        return None
    text = f"value-{digest(seed, 'str') % 10_000:04d}"
    max_len = schema.get("maxLength")
    return text[: int(max_len)] if max_len is not None else text


def last_user_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content", "")
            if isinstance(content, list):
                return " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            return str(content)
    return ""


def answer_text(fmt: dict[str, Any] | None, prompt: str, schema_key: str) -> str:
    """The assistant's text: JSON for a JSON format, else an echo of the prompt."""
    if fmt and fmt.get("type") == "json_schema":
        spec = fmt.get(schema_key, fmt) if schema_key else fmt
        schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
        return orjson.dumps(instance(schema, prompt)).decode()
    if fmt and fmt.get("type") == "json_object":
        return orjson.dumps({"echo": prompt[:80]}).decode()
    return f"Echo: {prompt[:200]}"
