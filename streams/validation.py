"""Local validation of request bodies, before they join a window. Pure.

A batch API validates the whole file before it runs anything: one malformed line fails the
whole batch. A request that can be judged here, with the provider's own SDK types, becomes an
``invalid_request`` dead letter at once instead. Each endpoint's checks are its
:class:`~streams.kinds.RequestFormat`'s (``providers/<kind>/formats.py``); the helpers they
share are here.

The SDKs' request types are TypedDicts; pydantic validates them, but it validates ``Iterable``
fields (``messages``) lazily, that is not at all. So the top-level parameters go through the
endpoint's params type, and each message through the type its ``role`` names.

Only structural errors count: a parameter or message field that is missing or of the wrong
type. A value the installed SDK does not list (a new model, effort level, format or tool type)
and anything nested deeper are left to the provider, so a newer API feature is never refused
here: a false refusal would dead-letter a good event.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from streams.kinds import RequestFormat

#: Error types that mean a wrong shape, not a value the installed SDK happens not to list.
STRUCTURAL = frozenset({
    "missing", "string_type", "int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
    "bool_type", "bool_parsing", "dict_type", "list_type",
})  # fmt: skip


def first_error(exc: ValidationError, prefix: str = "") -> str | None:
    """The first structural error of a field at the top level of the validated object, if any."""
    errors = [
        e for e in exc.errors(include_url=False, include_input=False)
        if len(e["loc"]) == 1 and e["type"] in STRUCTURAL
    ]  # fmt: skip
    if not errors:
        return None
    first = errors[0]
    where = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"'{where}': {first['msg']}{more}"


def check_params(adapter: TypeAdapter[Any], body: dict[str, Any]) -> str | None:
    """The first structural error of ``body`` against an endpoint's params type, if any."""
    try:
        adapter.validate_python(body)
    except ValidationError as exc:
        return first_error(exc)
    return None


def check_messages(body: dict[str, Any], roles: Mapping[str, TypeAdapter[Any]], types: bool = True) -> str | None:
    """``messages``: a non-empty list of objects, each with a role of ``roles`` and of its type."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"'messages.{index}' must be an object"
        role = message.get("role")
        adapter = roles.get(role) if isinstance(role, str) else None
        if adapter is None:
            return f"'messages.{index}.role' must be one of {', '.join(roles)}; got {role!r}"
        if not types:
            continue
        try:
            adapter.validate_python(message)
        except ValidationError as exc:
            problem = first_error(exc, f"messages.{index}")
            if problem is not None:
                return problem
    return None


def check_body(fmt: RequestFormat, body: dict[str, Any], *, types: bool = True) -> str | None:
    """Why the provider would refuse this request body for ``fmt``'s endpoint, or None when it
    looks valid.

    ``types=False`` skips the checks against the SDK's request types (the costly part) and
    keeps the others: for bodies rendered from a template whose rendering already passed them,
    since a template fixes every type and only fills in strings.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return "'model' must be a non-empty string"
    return fmt.check(body, types=types)
