"""A window round's events, read back from the input topic by offset (a window resumed after a
restart or a rebalance, or a round whose offsets the window no longer holds in memory)."""

from __future__ import annotations

import logging

from agents.outbox import Outbox
from agents.state import InputReader, WindowRecord
from streams.config import PipelineSettings
from streams.models import Request, Source, decode_event

log = logging.getLogger(__name__)


async def reread_round(
    record: WindowRecord, cfg: PipelineSettings, reader: InputReader, outbox: Outbox
) -> list[Request]:
    """The current round's requests, read again from the input topic by offset.

    They were accepted when the window was sealed, so they are decoded without local
    validation (a newer version or SDK may judge differently). An owed offset that no longer
    decodes as a request (the pipeline's template changed meanwhile) ends as a dead letter.
    """
    rows = await reader.read(record.partition, record.first_offset, record.last_offset)
    belongs = record.round_filter()
    owed = frozenset(record.offsets or ())
    accepted = cfg.model_copy(update={"validate_requests": False})
    requests, rejected = [], 0
    for offset, ts, key, value in rows:
        source = Source(cfg.input_topic, record.partition, offset, ts)
        decoded = decode_event(accepted, source, key, value)
        if isinstance(decoded, Request) and belongs(decoded):
            requests.append(decoded)
        elif not isinstance(decoded, Request) and offset in owed:
            outbox.rejected(source, key, value, decoded)
            rejected += 1
    if rejected:
        await outbox.flush()
    expected = len(owed) if record.offsets is not None else record.count
    if len(requests) + rejected != expected:
        log.warning("%s: %d of the round's %d events read back from the input topic (the rest are gone)",
                    record.window_id, len(requests) + rejected, expected)  # fmt: skip
    return requests
