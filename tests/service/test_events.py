"""/v1/events proven over a real socket: events arrive while the response is still open."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from .conftest import Live


def read_events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse an SSE stream into {"event", "id", "data"} dicts, comments as {"comment"}."""
    frame: dict[str, Any] = {}
    for line in resp.iter_lines():
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            key, _, value = line.partition(": ")
            frame[key] = json.loads(value) if key == "data" else value


class Stream:
    """Consume an event stream in a thread; ``next(timeout)`` returns the next frame."""

    def __init__(self, live: Live, headers: dict[str, str] | None = None) -> None:
        self.frames: queue.Queue[dict[str, Any]] = queue.Queue()
        self._client = live.client(timeout=httpx.Timeout(10.0, read=30.0))
        self._headers = headers or {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._client.stream("GET", "/v1/events", headers=self._headers) as resp:
                self.frames.put({"status": resp.status_code, "content-type": resp.headers["content-type"]})
                for frame in read_events(resp):
                    self.frames.put(frame)
                    if self._stop:
                        return
        except httpx.HTTPError:
            pass

    def next(self, timeout: float = 5.0, *, skip_comments: bool = True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            frame = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            if skip_comments and "comment" in frame:
                continue
            return frame

    def close(self) -> None:
        self._stop = True
        self._client.close()


def test_snapshot_then_one_event_per_change_with_revision_ids(live: Live) -> None:
    with live.client() as c:
        c.post("/v1/pauses/before", json={"holder": "h0"})
        s = Stream(live)
        try:
            head = s.next()
            assert head["status"] == 200 and head["content-type"].startswith("text/event-stream")
            assert s.next() == {"retry": "2000"}
            snap = s.next()
            assert snap["event"] == "snapshot"
            assert list(snap["data"]["paused"]) == ["before"]
            assert snap["id"] == str(snap["data"]["revision"])

            # a change made by the CLI (another process) arrives on the open stream
            t0 = time.monotonic()
            token = int(
                live.cli("pause", "org/lora", "--holder", "cli", "--reason", "swap")
                .stdout.strip()
                .split("-")[0]
            )
            ev = s.next()
            assert time.monotonic() - t0 < 5
            assert ev["event"] == "change" and ev["id"] == str(token)
            assert (ev["data"]["name"], ev["data"]["op"], ev["data"]["holder"], ev["data"]["paused"]) == (
                "org/lora",
                "pause",
                "cli",
                True,
            )
            assert ev["data"]["state"]["reason"] == "swap"

            c.delete("/v1/pauses/org%2Flora", params={"holder": "cli"})
            ev2 = s.next()
            assert ev2["data"]["op"] == "resume" and ev2["data"]["paused"] is False
            assert int(ev2["id"]) == token + 1
        finally:
            s.close()


def test_heartbeat_comments_when_idle(make_live: Callable[..., Live]) -> None:
    live = make_live(heartbeat_s=0.2)
    s = Stream(live)
    try:
        s.next()  # status
        comments = 0
        deadline = time.monotonic() + 5
        while comments < 2 and time.monotonic() < deadline:
            if "comment" in s.next(skip_comments=False):
                comments += 1
        assert comments >= 2
    finally:
        s.close()


def test_reconnect_with_last_event_id_starts_with_a_fresh_snapshot(live: Live) -> None:
    with live.client() as c:
        first = Stream(live)
        first.next(), first.next()
        rev = first.next()["id"]
        first.close()
        c.post("/v1/pauses/while-away")  # happens while disconnected
        second = Stream(live, headers={"Last-Event-ID": rev})
        try:
            second.next(), second.next()
            snap = second.next()
            assert snap["event"] == "snapshot" and "while-away" in snap["data"]["paused"]
            assert int(snap["id"]) > int(rev)
        finally:
            second.close()


def test_many_streams_one_subscription(live: Live) -> None:
    streams = [Stream(live) for _ in range(5)]
    try:
        for s in streams:
            s.next(), s.next(), s.next()
        with live.client() as c:
            c.post("/v1/pauses/fan-out")
        for s in streams:
            assert s.next()["data"]["name"] == "fan-out"
        import redis

        r = redis.Redis.from_url(live.redis_url)
        channel = f"pausesvc:{{{live.namespace}}}:events"
        assert r.pubsub_numsub(channel)[0][1] == 1  # the service's one watcher
        r.close()
    finally:
        for s in streams:
            s.close()
