"""What flows in: settings, the event contract, windows and the faust app."""

from streams.app import create_app
from streams.config import PipelineSettings, Settings
from streams.errors import BatchstreamError, ConfigError
from streams.kinds import KindFacts, RequestFormat
from streams.letters import DeadLetter
from streams.loading import load_settings
from streams.models import Request, Result, decode_event
from streams.windows import Window, Windower, WindowKey, WindowPolicy

__all__ = [
    "BatchstreamError",
    "ConfigError",
    "DeadLetter",
    "KindFacts",
    "PipelineSettings",
    "Request",
    "RequestFormat",
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
