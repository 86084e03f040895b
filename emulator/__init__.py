"""An OpenAI-compatible provider emulator for local runs, tests and benchmarks."""

from emulator.core import Faults
from emulator.server import Emulator, EmulatorThread, serve

__all__ = ["Emulator", "EmulatorThread", "Faults", "serve"]
