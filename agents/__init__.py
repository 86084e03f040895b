"""What acts: the faust agents of each pipeline and the provider clients they call."""

from agents.pipeline import Pipeline
from agents.provider import BatchClient

__all__ = ["BatchClient", "Pipeline"]
