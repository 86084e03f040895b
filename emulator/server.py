"""A provider emulator: OpenAI's Files, Batches and three synchronous endpoints, the same
under Azure OpenAI's routes (``/openai/...``), Anthropic's Message Batches and Messages
(``emulator/anthropic.py``), and Gemini's Batch Mode, Files and generateContent
(``emulator/gemini.py``).

Speaks the wire format the official ``openai`` SDK expects, keeps everything in memory and
answers deterministically. Faults are injected through :class:`Faults`, set at start-up or
at run time with ``POST /_emulator/faults`` (a partial JSON object); ``GET /_emulator/stats``
counts what happened, so tests can assert, for example, that no window was submitted twice.

Strict where the real servers are strict (``emulator/strict.py``): every line of a batch file
is checked for its endpoint when the batch is created, and a file with bad lines fails as a
whole (``failed``, ``errors.data`` naming the lines), as OpenAI's does; the 50,000-request and
200 MB limits apply; 429s carry ``Retry-After``; ``enqueued_token_limit`` enforces a per-model
limit of prompt tokens in running batches (``token_limit_exceeded``), as OpenAI's queue limit does.

Synchronous calls with ``service_tier="flex"`` take ``flex_latency`` seconds and are refused
with HTTP 429 at ``flex_429_rate`` (re-rolled on every attempt of the same request body);
models outside ``flex_models`` (a realistic default set) or listed in ``flex_unsupported_models``
reject the parameter with HTTP 400.

A batch is processed progressively: its requests finish evenly over ``batch_seconds``, so a
cancel or an expiry part-way keeps the finished part in the output file, as the real API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import orjson
from aiohttp import web

from emulator.anthropic import AnthropicApi
from emulator.core import Core, Faults, error, json_response
from emulator.gemini import GeminiApi
from emulator.openai_batches import OpenAIBatches
from emulator.openai_files import OpenAIFiles
from emulator.openai_sync import OpenAISync


class Emulator(Core):
    """Every emulated API on one :class:`~emulator.core.Core`; ``app()`` builds the aiohttp application."""

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=256 * 1024 * 1024)
        files, batches = OpenAIFiles(self), OpenAIBatches(self)
        app.add_routes([
            *files.routes("/v1"), *files.routes("/openai"),
            *batches.routes("/v1"), *batches.routes("/openai"),
            *OpenAISync(self).routes(),
            web.get("/_emulator/faults", self.get_faults),
            web.post("/_emulator/faults", self.set_faults),
            web.get("/_emulator/stats", self.get_stats),
            web.post("/_emulator/reset", self.reset),
            *AnthropicApi(self).routes(),
            *GeminiApi(self).routes(),
        ])  # fmt: skip
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, _app: web.Application) -> None:
        for task in self.running_tasks():
            task.cancel()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1/messages"):
            refused = AnthropicApi.authorized(request)
            if refused is not None:
                return refused
        elif request.path.startswith(("/v1beta/", "/upload/v1beta/")):
            refused = GeminiApi.authorized(request)
            if refused is not None:
                return refused
        elif request.path.startswith("/openai/"):
            if not request.headers.get("api-key", "").strip():
                return error(401, "Access denied due to invalid subscription key.", code="401")
            if not request.query.get("api-version"):
                return error(404, "Resource not found", code="404")
        elif request.path.startswith("/v1/"):
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
                return error(401, "You didn't provide an API key.", code="invalid_api_key")
            key = auth.removeprefix("Bearer ").strip()
            if key in self.faults.refused_keys:
                masked = f"{key[:3]}{'*' * max(0, len(key) - 7)}{key[-4:]}"
                return error(401, f"Incorrect API key provided: {masked}.", code="invalid_api_key")
        response: web.StreamResponse = await handler(request)
        return response

    # -- control -------------------------------------------------------------------------
    async def get_faults(self, _request: web.Request) -> web.Response:
        return json_response(self.faults.model_dump())

    async def set_faults(self, request: web.Request) -> web.Response:
        update = orjson.loads(await request.read())
        self.faults = Faults.model_validate({**self.faults.model_dump(), **update})
        return json_response(self.faults.model_dump())

    async def get_stats(self, _request: web.Request) -> web.Response:
        return json_response({**self.stats, "flex_calls_max_per_request": max(self.flex_calls.values(), default=0)})

    async def reset(self, _request: web.Request) -> web.Response:
        self.clear()
        return json_response({"reset": True})


class EmulatorThread:
    """The emulator on a loopback port in a background thread (for tests and the demo)."""

    def __init__(self, faults: Faults | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.emulator = Emulator(faults)
        self.host, self.port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="emulator", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI SDK's base URL."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The server's root: the Anthropic SDK's base URL, and Azure's resource endpoint."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start serving (idempotent); return the base URL."""
        if self._thread.is_alive():
            return self.base_url
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self.base_url

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.emulator.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Stop serving (idempotent; a no-op when never started)."""
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def serve(host: str, port: int, faults: Faults) -> None:
    """Run in the foreground until SIGINT/SIGTERM; the first stdout line is ``base_url=...``."""

    async def announce(_app: web.Application) -> None:
        print(f"base_url=http://{host}:{port}/v1", flush=True)  # noqa: T201 - the CLI's contract

    app = Emulator(faults).app()
    app.on_startup.append(announce)
    web.run_app(app, host=host, port=port, print=None, access_log=None)
