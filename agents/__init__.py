"""What acts: the faust agents of each pipeline and the provider clients they call."""

from agents.batch import BatchPipeline
from agents.provider import BatchClient

__all__ = ["BatchClient", "BatchPipeline"]
