"""An OpenAI-compatible provider emulator for local runs, tests and benchmarks."""

from emulator.server import Emulator, EmulatorThread, Faults, serve

__all__ = ["Emulator", "EmulatorThread", "Faults", "serve"]
