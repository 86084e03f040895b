"""Reading settings: a YAML file, ``${VAR}`` replaced, validated against the provider kinds given.

``${VAR}`` anywhere in a string value is replaced from the environment before validation
(``${VAR:-default}`` gives a default); a missing variable is an error naming the field.
``providers.load_settings`` / ``providers.parse_settings`` give these the registry's kinds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from streams.config import Settings
from streams.errors import ConfigError
from streams.kinds import KindFacts

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` in every string of a parsed YAML document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path}: environment variable {name} is not set")

        return _VAR.sub(substitute, value)
    return value


def format_validation_error(source: str, exc: ValidationError) -> str:
    lines = [f"invalid configuration in {source}:"]
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        # A check across sections names its own field (``pipelines.0.mode: ...``).
        lines.append(f"  {field}: {message}" if field else f"  {message}")
    return "\n".join(lines)


def load_settings(path: str | Path, env: dict[str, str] | None = None, *, kinds: Mapping[str, KindFacts]) -> Settings:
    """Read, interpolate and validate a configuration file; raise ConfigError naming the field.

    ``kinds``: the provider kinds a configuration may name (``providers.load_settings`` gives
    the registry's)."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_settings(document, source=str(path), env=env, kinds=kinds)


def parse_settings(
    document: dict[str, Any],
    *,
    source: str = "<config>",
    env: dict[str, str] | None = None,
    kinds: Mapping[str, KindFacts],
) -> Settings:
    document = interpolate(document, dict(os.environ) if env is None else env)
    try:
        return Settings.model_validate(document, context={"kinds": kinds})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
