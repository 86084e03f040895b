"""What acts: the pipeline's agents, lanes and the worker."""

from agents.pipeline import Pipeline

__all__ = ["Pipeline"]
