"""The worker's HTTP endpoints on ``metrics_port``: ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/metrics``: Prometheus exposition of the process's metrics;
- ``/healthz``: 200 while the process and its event loop answer (a liveness probe);
- ``/readyz``: 200 when the worker can do its job, else 503; the JSON body says which check
  failed:

  * ``partitions``: every pipeline has received its assignment (possibly empty: a standby
    replica of a group with more workers than partitions is ready) and loaded the state of
    its partitions, and is not in the middle of a rebalance;
  * ``broker``: the Kafka cluster answers a metadata request (checked at most every
    ``BROKER_TTL`` seconds);
  * ``providers``: each provider answers an authenticated listing call (at most every
    ``PROVIDER_TTL`` seconds; a server without the listing route still counts as reachable,
    a refused key does not).

Served by aiohttp on the worker's event loop, so a blocked loop fails ``/healthz`` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from providers import Provider
from sinks.topics import TopicAdmin
from streams.errors import ProviderAccountError, ProviderError, ProviderRejected, redact

log = logging.getLogger(__name__)

#: How long a passed broker or provider check is reused (probes come every few seconds); a
#: failed one is checked again after ``FAILED_TTL``, so readiness returns soon after a fix.
BROKER_TTL = 5.0
PROVIDER_TTL = 30.0
FAILED_TTL = 5.0
#: How long one check may take before it counts as failed.
CHECK_TIMEOUT = 5.0


def quiet(exc: BaseException) -> str:
    """A failed check as ``/readyz`` says it, unauthenticated: the kind of failure and the
    provider's status and code, never its text (which may quote a key or an internal host)."""
    if isinstance(exc, ProviderAccountError):
        return f"the provider refuses the key or the account (HTTP {exc.status_code})"
    if isinstance(exc, ProviderError):
        parts = [type(exc).__name__]
        parts.append(f"HTTP {exc.status_code}" if exc.status_code is not None else "(no answer)")
        if exc.code:
            parts.append(redact(exc.code))
        return " ".join(parts)
    return type(exc).__name__


class Assignable(Protocol):
    """What readiness reads of a pipeline."""

    @property
    def name(self) -> str: ...

    @property
    def assignment(self) -> tuple[bool, int]:
        """(assigned and state loaded, partitions owned)."""


class _Cached:
    """The last outcome of a check (None: passed; else why it failed), renewed after ``ttl``."""

    def __init__(self, check: Callable[[], Awaitable[None]], ttl: float) -> None:
        self.check, self.ttl = check, ttl
        self._at = float("-inf")
        self._problem: str | None = "not checked yet"
        self._lock = asyncio.Lock()

    async def problem(self) -> str | None:
        async with self._lock:
            if time.monotonic() - self._at >= (self.ttl if self._problem is None else FAILED_TTL):
                try:
                    await asyncio.wait_for(self.check(), CHECK_TIMEOUT)
                    self._problem = None
                except TimeoutError:
                    self._problem = f"no answer within {CHECK_TIMEOUT:g}s"
                except Exception as exc:  # noqa: BLE001 - any failure makes the worker unready, with its reason
                    self._problem = quiet(exc)
                self._at = time.monotonic()
            return self._problem


class Health:
    """The endpoints of one worker process."""

    def __init__(self, *, bootstrap: str, kafka_options: dict[str, Any]) -> None:
        self.pipelines: Sequence[Assignable] = ()
        self._admin: TopicAdmin | None = None
        self._bootstrap, self._options = bootstrap, kafka_options
        self._broker = _Cached(self._check_broker, BROKER_TTL)
        self._providers: dict[str, _Cached] = {}
        self._runner: web.AppRunner | None = None
        #: Why the worker is not running yet (start-up waits for Kafka); None once it runs.
        self.starting: str | None = "starting"

    def attach(self, pipelines: Sequence[Assignable], providers: Sequence[Provider]) -> None:
        """Start-up is over: readiness now checks these pipelines and providers."""
        self.pipelines = pipelines
        self._providers = {p.name: _Cached(self._pinger(p), PROVIDER_TTL) for p in providers}
        self.starting = None

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/metrics", self.metrics), web.get("/healthz", self.healthz), web.get("/readyz", self.readyz),
        ])  # fmt: skip
        return app

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        log.info("serving /metrics, /healthz and /readyz on %s:%d", host, port)

    async def stop(self, *_: Any, **__: Any) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    # -- endpoints ----------------------------------------------------------------------
    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _request: web.Request) -> web.Response:
        ready, checks = await self.readiness()
        return web.Response(body=orjson.dumps({"ready": ready, "checks": checks}), status=200 if ready else 503,
                            content_type="application/json")  # fmt: skip

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the worker is ready, and each check's outcome ("ok" or why not)."""
        if self.starting is not None:
            return False, {"starting": self.starting}
        partitions: dict[str, str] = {}
        for pipeline in self.pipelines:
            assigned, owned = pipeline.assignment
            partitions[pipeline.name] = f"ok ({owned} partitions)" if assigned else "waiting for its assignment"
        names = list(self._providers)
        broker, *problems = await asyncio.gather(self._broker.problem(), *(self._providers[n].problem() for n in names))
        providers = {name: problem or "ok" for name, problem in zip(names, problems, strict=True)}
        checks = {"partitions": partitions, "broker": broker or "ok", "providers": providers}
        ready = all(v.startswith("ok") for v in partitions.values()) and broker is None
        return ready and all(v == "ok" for v in providers.values()), checks

    # -- checks ---------------------------------------------------------------------------
    async def _check_broker(self) -> None:
        if self._admin is None:
            admin = TopicAdmin(self._bootstrap, self._options, request_timeout=CHECK_TIMEOUT)
            await admin.start()  # a client that never started is closed there: not kept, nor leaked
            self._admin = admin
        await self._admin.describe_cluster()

    @staticmethod
    def _pinger(provider: Provider) -> Callable[[], Awaitable[None]]:
        async def ping() -> None:
            try:
                await provider.ping()
            except ProviderRejected as exc:
                if exc.status_code in (401, 403):
                    raise  # reachable, but the key is refused: not able to work
                # any other 4xx: the server answered (it may not offer the listing route)

        return ping
