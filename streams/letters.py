"""Dead letters: one failed event on the dead-letter topic, with its original (or, when the
original cannot fit the topic's records, a reference to it). Pure."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

from streams.config import PipelineSettings
from streams.errors import redact, redact_all
from streams.models import ReasonCode, Rejection, Source, SourceRecord


class OriginalRef(BaseModel):
    """Where a dead letter's original is, when it is too large (or too deeply nested) to travel
    with it: its input record, and the original's size and SHA-256 when they are known."""

    model_config = ConfigDict(frozen=True)

    topic: str
    partition: int
    offset: int
    size: int | None = None
    sha256: str | None = None


class DeadLetter(BaseModel):
    """One failed event, on the dead-letter topic; the original travels with it (or, when it
    cannot fit the topic's records, a reference to it and its first bytes)."""

    model_config = ConfigDict(frozen=True)

    id: str
    pipeline: str
    reason: ReasonCode
    message: str
    attempts: int
    batch_id: str | None = None
    error: dict[str, Any] | None = None
    #: The decoded event when it was JSON, else None and ``original_base64`` holds the bytes.
    event: Any = None
    original_base64: str | None = None
    #: Set instead of ``event``/``original_base64`` when the original cannot travel with the letter.
    original_ref: OriginalRef | None = None
    #: The original's first :data:`HEAD_BYTES` bytes, base64, next to ``original_ref``.
    original_head_base64: str | None = None
    source: SourceRecord


#: How much of an original a reference-only dead letter still carries.
HEAD_BYTES = 1024
#: The longest ``message`` a dead letter carries (provider error texts can be long).
MESSAGE_CHARS = 4000


def encode_dead_letter(letter: DeadLetter, original: bytes | None, max_bytes: int) -> bytes:
    """The dead letter as a record value of at most ``max_bytes``.

    The letter as it is when it fits; otherwise (too large, or its event nested deeper than
    JSON output allows) the original is replaced by a reference (:class:`OriginalRef`: its
    input record, size and SHA-256) and its first bytes, and ``error`` by its size. ``original``:
    the input record's bytes when the caller has them.
    """
    message = redact(letter.message)  # a provider's text may quote a key, in its message or error object
    if len(message) > MESSAGE_CHARS:
        message = message[: MESSAGE_CHARS - 3] + "..."
    error = redact_all(letter.error) if letter.error is not None else None
    if message != letter.message or error != letter.error:
        letter = letter.model_copy(update={"message": message, "error": error})
    try:
        full = orjson.dumps(letter.model_dump(mode="json"))
    except (TypeError, ValueError):  # nested deeper than pydantic or orjson write
        full = b""
    if full and len(full) <= max_bytes:
        return full
    if original is None and letter.original_base64 is not None:
        original = base64.b64decode(letter.original_base64)
    if original is None and letter.event is not None:
        try:
            original = orjson.dumps(letter.event)
        except TypeError:
            original = None
    source = letter.source
    ref = OriginalRef(
        topic=source.topic, partition=source.partition, offset=source.offset,
        size=None if original is None else len(original),
        sha256=None if original is None else hashlib.sha256(original).hexdigest(),
    )  # fmt: skip
    error = letter.error
    if error is not None:
        try:
            size = len(orjson.dumps(error))
        except TypeError:
            size = None
        if size is None or size > HEAD_BYTES:
            error = {"omitted": "too large for the dead-letter topic's records", "bytes": size}
    head = None if original is None else base64.b64encode(original[:HEAD_BYTES]).decode()
    reduced = letter.model_copy(update={
        "event": None, "original_base64": None, "original_ref": ref, "original_head_base64": head, "error": error,
    })  # fmt: skip
    out = orjson.dumps(reduced.model_dump(mode="json"))
    if len(out) > max_bytes:  # a very small limit: the reference alone
        bare = reduced.model_copy(update={"original_head_base64": None, "error": None, "message": letter.message[:200]})
        out = orjson.dumps(bare.model_dump(mode="json"))
    return out


def dead_letter_for(
    cfg: PipelineSettings,
    source: Source,
    value: bytes | None,
    rejection: Rejection,
    *,
    event_id: str | None = None,
    attempts: int = 0,
    batch_id: str | None = None,
    error: dict[str, Any] | None = None,
) -> DeadLetter:
    """A dead letter carrying the original: decoded JSON when it was JSON, else base64 bytes."""
    event: Any = None
    original: str | None = None
    try:
        event = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        original = base64.b64encode(value or b"").decode()
    if event_id is None:
        event_id = str(event["id"]) if isinstance(event, dict) and "id" in event else source.default_id
    return DeadLetter(
        id=event_id,
        pipeline=cfg.name,
        reason=rejection.reason,
        message=rejection.message,
        attempts=attempts,
        batch_id=batch_id,
        error=error,
        event=event,
        original_base64=original,
        source=SourceRecord.of(source),
    )
