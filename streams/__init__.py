"""What flows in: settings, the event contract, windows and the faust app."""

from streams.app import create_app
from streams.config import PipelineSettings, Settings, load_settings
from streams.errors import BatchstreamError, ConfigError
from streams.letters import DeadLetter
from streams.models import Request, Result, decode_event
from streams.windows import Window, Windower, WindowKey, WindowPolicy

__all__ = [
    "BatchstreamError",
    "ConfigError",
    "DeadLetter",
    "PipelineSettings",
    "Request",
    "Result",
    "Settings",
    "Window",
    "WindowKey",
    "WindowPolicy",
    "Windower",
    "create_app",
    "decode_event",
    "load_settings",
]
