"""``batchstream webhooks``: receive completion webhooks, verify them, publish the batch ids.

OpenAI sends ``batch.completed``, ``batch.failed``, ``batch.expired`` and ``batch.cancelled``
events, signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
``webhook-signature`` headers). Each delivery is verified with the openai SDK's own webhook
verification and the configured signing secret: a bad or missing signature, or a timestamp
more than five minutes off, is answered 400 and never trusted. A verified batch event is
published (acks=all) to the webhooks topic before the delivery is answered 200, so a failure to
publish is a 500 the provider retries. Other verified events are answered 200 and dropped.
Workers read the topic and read each named batch at once (``agents/webhooks.py``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import openai
import orjson
from aiohttp import web

from sinks.publisher import Publisher
from streams.config import WebhookSettings
from streams.topics import BrokerError

log = logging.getLogger(__name__)

BATCH_EVENTS = frozenset({"batch.completed", "batch.failed", "batch.expired", "batch.cancelled"})


class WebhookReceiver:
    """The aiohttp application: ``POST /`` (and ``POST /webhooks``) take deliveries."""

    def __init__(self, settings: WebhookSettings, bootstrap: str, options: dict[str, Any]) -> None:
        self.settings = settings
        self._bootstrap, self._options = bootstrap, options
        # Only the webhook verification of the SDK is used: no API key, no call is made.
        self._client = openai.AsyncOpenAI(api_key="unused", webhook_secret=settings.secret.get_secret_value())
        self._producer: Publisher | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024)
        app.add_routes([web.post("/", self.deliver), web.post("/webhooks", self.deliver)])
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        self._producer = Publisher(self._bootstrap, self._options)
        await self._producer.start()

    async def _stop(self, _app: web.Application) -> None:
        if self._producer is not None:
            await self._producer.stop()
        await self._client.close()

    async def deliver(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = self._client.webhooks.unwrap(body, dict(request.headers))
        except (openai.InvalidWebhookSignatureError, ValueError) as exc:
            log.warning("refused a webhook delivery: %s", exc)
            return web.json_response({"error": f"not verified: {exc}"}, status=400)
        batch_id = getattr(getattr(event, "data", None), "id", None)
        if event.type not in BATCH_EVENTS or not isinstance(batch_id, str):
            return web.json_response({"ignored": event.type})
        record = {"type": event.type, "batch_id": batch_id, "webhook_id": request.headers.get("webhook-id"),
                  "received_at": time.time()}  # fmt: skip
        assert self._producer is not None
        try:
            await self._producer.send_and_wait(self.settings.topic, orjson.dumps(record), key=batch_id.encode())
        except BrokerError as exc:
            log.warning("cannot publish webhook for batch %s: %s", batch_id, exc)
            return web.json_response({"error": "cannot publish; deliver again"}, status=500)
        log.info("webhook %s: batch %s", event.type, batch_id)
        return web.json_response({"published": batch_id})
