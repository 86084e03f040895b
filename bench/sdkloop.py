"""A bare openai SDK loop: N chat completions with ``service_tier="flex"``, C in flight at once.

Run by ``bench.flex`` as its own process (the worker is one too): ``python -m bench.sdkloop
BASE_URL N C [httpx|aiohttp]``: the SDK's default HTTP transport (httpx), or its aiohttp one
(``openai.DefaultAioHttpClient``, which batchstream's providers use). Prints the seconds from
the first call to the last answer and the process's CPU seconds over the same span.
"""

from __future__ import annotations

import asyncio
import sys
import time

import openai


async def main(base_url: str, n: int, concurrency: int, transport: str = "httpx") -> tuple[float, float]:
    http_client = openai.DefaultAioHttpClient() if transport == "aiohttp" else None
    client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0, http_client=http_client)
    calls = iter(range(n))

    async def caller() -> None:  # C of these, each making calls one after another until N are made
        for i in calls:
            await client.chat.completions.create(
                model="gpt-5-mini", service_tier="flex", messages=[{"role": "user", "content": f"benchmark event {i}"}]
            )

    started, cpu = time.perf_counter(), time.process_time()
    try:
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    finally:
        await client.close()
    return time.perf_counter() - started, time.process_time() - cpu


if __name__ == "__main__":
    print(*asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])), flush=True)
