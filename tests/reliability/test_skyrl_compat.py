"""SkyRL wire compatibility, under SkyRL's own concurrent fan-out.

No SkyRL code here: a scripted client issues exactly the request sequence SkyRL's
``RemoteInferenceClient`` sends (``../shared/context``: PRs #1657/#1666/#1669) to real replica
processes (the real gate in front of the fake engine, ``harness/fleet.py``):

1. ``abort_lora_requests`` on EVERY replica at once (``asyncio.gather``, like SkyRL's fan-out);
   each call re-pauses under the one holder and bumps the revision;
2. the weight load on every replica (the fake engine's ``/fake/swap``);
3. ``resume_lora_requests`` on every replica at once;
4. ``wait_lora_unpaused``.

Meanwhile samplers run SkyRL's ``sample_with_retry`` loop (on ``finish_reason == "abort"``: wait
until unpaused, resubmit with the tokens so far appended to the prompt and the budget cut).
Judged by what the clients received and by the engines' token logs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pausesvc import EmbeddedRedis
from reliability.harness.fake_engine import VERSION_BASE
from reliability.harness.fleet import Fleet, Replica
from reliability.harness.probe import until

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

LORA = "lora-A"
SKYRL = "/skyrl/v1"


class Sampler:
    """SkyRL's ``sample_with_retry`` for n=1 against one replica, with every attempt recorded."""

    def __init__(self, c: httpx.AsyncClient, rep: Replica, prompt: list[int], max_tokens: int) -> None:
        self.c, self.rep, self.prompt, self.max_tokens = c, rep, prompt, max_tokens
        self.tokens: list[int] = []
        self.attempts: list[dict[str, Any]] = []  # {"id", "finish", "tokens", "sent_at"}
        self.finish: str | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            left = self.max_tokens - len(self.tokens)
            if left <= 0:
                self.finish = "length"  # SkyRL: no further call
                return
            sent = time.monotonic_ns()
            r = await self.c.post(
                self.rep.url + "/v1/completions",
                json={"model": LORA, "prompt": self.prompt + self.tokens, "max_tokens": left},
            )
            r.raise_for_status()  # SkyRL raises on anything but 200
            body = r.json()
            choice = body["choices"][0]
            finish = choice.get("finish_reason") or "abort"  # missing counts as abort
            self.attempts.append(
                {"id": body["id"], "finish": finish, "tokens": list(choice["token_ids"]), "sent_at": sent}
            )
            self.tokens += choice["token_ids"]
            if finish != "abort":
                self.finish = finish
                return
            while (
                await post(self.c, self.rep, "wait_lora_unpaused", {"lora_name": LORA, "timeout_s": 60.0})
            ).json()["paused"]:
                pass


async def post(c: httpx.AsyncClient, rep: Replica, endpoint: str, body: dict[str, Any]) -> httpx.Response:
    return await c.post(f"{rep.url}{SKYRL}/{endpoint}", json=body)


def lora_tokens(rep: Replica) -> list[tuple[int, int, str]]:
    """(monotonic_ns, version, request) of every token of LORA this replica emitted."""
    out = []
    for line in rep.log.read_text().splitlines():
        f = line.split("\t")
        if f[0] == LORA:
            out.append((int(f[3]), int(f[2]), f[4]))
    return out


async def test_skyrl_fan_out_pause_swap_resume(
    redis_srv: EmbeddedRedis, ns: str, make_fleet: Callable[..., Fleet], figures: Callable[..., None]
) -> None:
    fleet = make_fleet(redis_srv.url, ns, interval=0.01)
    reps = fleet.start(3)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60)) as c:
        # two long samples in flight on every replica (400 tokens at 10 ms each: ~4 s)
        samplers = {r.name: [Sampler(c, r, [10, 20, 30], 400) for _ in range(2)] for r in reps}

        async def decoding() -> bool:
            states = [(await c.get(r.url + "/fake/state")).json() for r in reps]
            return all(s["live_count"] >= 2 and s["tokens"] >= 2 for s in states)

        await until(decoding, 10, "every replica decodes its two samples")

        # 1. SkyRL's fan-out: abort on every replica at once
        t_abort = time.monotonic_ns()
        aborts = await asyncio.gather(*(post(c, r, "abort_lora_requests", {"lora_name": LORA}) for r in reps))
        t_aborted = time.monotonic_ns()
        for r, a in zip(reps, aborts, strict=True):
            assert a.status_code == 200, (r.name, a.text)
        answers = {r.name: a.json() for r, a in zip(reps, aborts, strict=True)}

        # held: a fresh sample sent to each replica while the LoRA is paused
        fresh = {r.name: Sampler(c, r, [7], 5) for r in reps}
        await asyncio.sleep(0.3)

        # 2. the weight load, on every replica
        for r in reps:
            swap = await c.post(r.url + "/fake/swap", json={"adapter": LORA, "version": 1})
            assert swap.json()["live"] == [], f"{r.name} still decodes {LORA} at the swap"
        await asyncio.sleep(0.2)
        assert not any(s.task.done() for s in fresh.values()), "a request ran while paused"
        assert not any(s.task.done() for ss in samplers.values() for s in ss)

        # 3. resume on every replica at once, 4. wait until unpaused
        t_resume = time.monotonic_ns()
        resumes = await asyncio.gather(
            *(post(c, r, "resume_lora_requests", {"lora_name": LORA}) for r in reps)
        )
        assert all(x.status_code == 200 and x.json()["status"] == "ok" for x in resumes)
        waits = await asyncio.gather(
            *(post(c, r, "wait_lora_unpaused", {"lora_name": LORA, "timeout_s": 5.0}) for r in reps)
        )
        assert [w.json() for w in waits] == [{"paused": False}] * len(reps)

        everything = [s.task for ss in samplers.values() for s in ss]
        everything += [s.task for s in fresh.values()]
        await asyncio.wait_for(asyncio.gather(*everything), 20)
    t_done = time.monotonic_ns()

    for r in reps:
        # each replica's answer lists exactly what THAT replica aborted in that call
        first = [s.attempts[0] for s in samplers[r.name]]
        assert all(a["finish"] == "abort" for a in first), first
        answer = answers[r.name]
        assert answer["status"] == "ok"
        assert sorted(answer["aborted"]) == sorted(a["id"] for a in first), (r.name, answers)
        assert answer["count"] == len(answer["aborted"]) == 2

        toks = lora_tokens(r)
        # no token of the LoRA between every abort returning and the resumes
        between = [t for t in toks if t_aborted < t[0] < t_resume]
        assert between == [], f"{r.name} decoded {LORA} while paused: {between[:5]}"
        # old weights before the pause, new weights after it, never mixed in one decode step
        assert all(v == 0 for ts, v, _ in toks if ts < t_abort)
        assert all(v == 1 for ts, v, _ in toks if ts > t_resume)
        assert "VIOLATION" not in r.log.read_text()

        # the aborted samples went on after the resume with their tokens kept (SkyRL's loop)
        for s in samplers[r.name]:
            assert s.finish == "length" and len(s.tokens) == 400
            # it waited (wait_lora_unpaused) and resubmitted only once the LoRA was resumed
            assert len(s.attempts) == 2 and s.attempts[1]["sent_at"] > t_resume
            versions = [t // VERSION_BASE for t in s.tokens]
            k = len(s.attempts[0]["tokens"])
            assert set(versions[:k]) == {0} and set(versions[k:]) == {1}
        # the sample sent during the pause was held and completed on the new weights
        f = fresh[r.name]
        assert f.finish == "length" and len(f.attempts) == 1
        assert {t // VERSION_BASE for t in f.tokens} == {1}

    figures(
        replicas=len(reps),
        abort_fan_out_ms=round((t_aborted - t_abort) / 1e6, 1),
        aborted={n: a["count"] for n, a in answers.items()},
        total_s=round((t_done - t_abort) / 1e9, 2),
    )
