"""What every in-flight window of one pipeline works with (``agents/inflight.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agents.flex import FlexRunner
from agents.metrics import PipelineMetrics
from agents.outbox import Outbox
from agents.polling import BatchWatch
from agents.quota import Quotas, TokenEstimate
from agents.rounds import HeldRequests, InputReader
from agents.state import Ledger
from agents.tasks import PartitionTasks
from providers import Provider
from streams.config import PipelineSettings
from streams.provider_config import ProviderSettings


@dataclass(frozen=True, slots=True)
class WindowServices:
    """What every in-flight window of one pipeline works with."""

    cfg: PipelineSettings
    provider: ProviderSettings
    client: Provider
    ledger: Ledger
    outbox: Outbox
    flex: FlexRunner
    tasks: PartitionTasks
    reader: InputReader
    workdir: Path
    metrics: PipelineMetrics
    watch: BatchWatch
    #: The provider's enqueued-token quotas (shared by its pipelines) and this pipeline's estimate.
    quotas: Quotas = field(default_factory=lambda: Quotas(None))
    estimate: TokenEstimate = field(default_factory=TokenEstimate)
    #: The pipeline's budget of requests kept in memory by waiting windows.
    held: HeldRequests = field(default_factory=lambda: HeldRequests(50_000, 500))
