"""The extra latency a resumed sample pays after the resume.

Per trial: a sample is in flight on a fake vLLM (a real uvicorn server, in its own thread), the
adapter is paused through Redis, the server answers the request with ``finish_reason: "abort"``
and 3 tokens, the client waits; then ``resume()`` is called and we time how long until the
resubmitted request reaches the server. Printed as JSON (seconds).

    python bench/sampling_latency.py --trials 200            # starts its own redis-server
    python bench/sampling_latency.py --redis-url redis://... --waiter service
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import threading
import time
from typing import Any

import httpx
import uvicorn

from pausesvc import AsyncPauseClient, EmbeddedRedis
from pausesvc.sampling import sample_with_retry


class FakeVLLM:
    """First request of a trial: held until released, then aborted with 3 tokens. Second: stop."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.release: asyncio.Future[None] | None = None
        self.arrivals: list[float] = []
        self.arrived = threading.Condition()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        t = time.perf_counter()
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = json.loads(b"".join(chunks))
        first = len(body["prompt"]) == 3
        if first:
            self.loop = asyncio.get_running_loop()
            self.release = self.loop.create_future()
        with self.arrived:
            self.arrivals.append(t)
            self.arrived.notify_all()
        if first:
            assert self.release is not None
            await self.release
        tokens = [100, 101, 102] if first else [200, 201]
        choice = {
            "index": 0,
            "text": "",
            "finish_reason": "abort" if first else "stop",
            "token_ids": tokens,
            "prompt_token_ids": body["prompt"],
        }
        data = json.dumps({"choices": [choice]}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": data})

    def abort_now(self) -> None:
        assert self.loop is not None and self.release is not None
        fut = self.release
        self.loop.call_soon_threadsafe(fut.set_result, None)

    async def wait_arrivals(self, n: int, timeout: float = 10.0) -> None:
        def wait() -> None:
            with self.arrived:
                if not self.arrived.wait_for(lambda: len(self.arrivals) >= n, timeout):
                    raise TimeoutError(f"request {n} did not arrive")

        await asyncio.to_thread(wait)


def serve(app: FakeVLLM) -> tuple[uvicorn.Server, threading.Thread, int]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


async def run(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    app = FakeVLLM()
    server, thread, port = serve(app)
    from_call: list[float] = []
    from_return: list[float] = []
    name = "lora-bench"
    try:
        async with (
            AsyncPauseClient(redis_url, namespace="bench-sampling") as pauses,
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(60, connect=5)
            ) as http,
        ):
            waiter: Any = pauses
            svc = None
            if args.waiter == "service":
                from pausesvc.sampling import ServiceWaiter

                if not args.service_url:
                    sys.exit("--waiter service needs --service-url")
                svc = ServiceWaiter(args.service_url)
                waiter = svc
            await (await pauses.watcher()).wait_synced(10)
            for i in range(args.trials + args.warmup):
                n = len(app.arrivals)
                req = {"model": name, "prompt": [1, 2, 3], "max_tokens": 8}
                task = asyncio.create_task(sample_with_retry(http, "", req, waiter=waiter))
                await app.wait_arrivals(n + 1)
                grant = await pauses.pause(name, holder="bench")
                app.abort_now()
                await asyncio.sleep(args.settle)  # the abort reaches the client, it waits
                t0 = time.perf_counter()
                await pauses.resume(name, holder="bench", token=grant.token)
                t1 = time.perf_counter()
                await app.wait_arrivals(n + 2)
                result = await task
                assert result.tokens == [100, 101, 102, 200, 201], result.tokens
                assert result.boundaries[0].index == 3
                if i >= args.warmup:
                    from_call.append(app.arrivals[n + 1] - t0)
                    from_return.append(app.arrivals[n + 1] - t1)
            if svc is not None:
                await svc.aclose()
    finally:
        server.should_exit = True
        thread.join(5)

    def summary(v: list[float]) -> dict[str, float]:
        return {
            "median_s": statistics.median(v),
            "p99_s": pct(v, 99),
            "mean_s": statistics.mean(v),
            "min_s": min(v),
            "max_s": max(v),
        }

    return {
        "trials": len(from_call),
        "waiter": args.waiter,
        "resume_call_to_resubmission": summary(from_call),
        "resume_returned_to_resubmission": summary(from_return),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--settle", type=float, default=0.05)
    p.add_argument("--redis-url")
    p.add_argument("--waiter", choices=["watcher", "service"], default="watcher")
    p.add_argument("--service-url")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.redis_url
        if url is None:
            url = stack.enter_context(EmbeddedRedis()).url
        print(json.dumps(asyncio.run(run(args, url)), indent=2))


if __name__ == "__main__":
    main()
