"""httpx's habits: a timeout that would be ignored is refused, and a closed client says so."""

from __future__ import annotations

import pytest

from pausesvc import AsyncPauseClient, ClientClosedError, InvalidInputError, PauseClient


def test_a_timeout_without_drain_is_refused(redis_url: str, namespace: str) -> None:
    with PauseClient(redis_url, namespace=namespace) as client:
        _refused(client)


def _refused(client: PauseClient) -> None:
    with pytest.raises(InvalidInputError) as err:
        client.pause("a", timeout=5)
    assert err.value.field == "timeout"
    with pytest.raises(InvalidInputError), client.paused("a", timeout=5):
        pass
    assert not client.is_paused("a")  # nothing was written
    assert client.pause("a", drain=True, timeout=5).created  # no replica: nothing to wait for


async def test_a_timeout_without_drain_is_refused_async(redis_url: str, namespace: str) -> None:
    async with AsyncPauseClient(redis_url, namespace=namespace) as c:
        with pytest.raises(InvalidInputError) as err:
            await c.pause("a", timeout=5)
        assert err.value.field == "timeout"
        with pytest.raises(InvalidInputError):
            async with c.paused("a", timeout=5):
                pass
        assert not await c.is_paused("a")


def test_a_closed_client_refuses_calls(redis_url: str, namespace: str) -> None:
    c = PauseClient(redis_url, namespace=namespace)
    c.close()
    c.close()  # idempotent
    for call in (lambda: c.pause("a"), lambda: c.snapshot(), lambda: c.is_paused("a"), lambda: c.replicas()):
        with pytest.raises(ClientClosedError):
            call()


async def test_a_closed_async_client_refuses_calls(redis_url: str, namespace: str) -> None:
    c = AsyncPauseClient(redis_url, namespace=namespace)
    await c.aclose()
    with pytest.raises(ClientClosedError):
        await c.pause("a")
    with pytest.raises(ClientClosedError):
        await c.snapshot()
    with pytest.raises(ClientClosedError):
        await c.watcher()
    assert isinstance(ClientClosedError("x"), RuntimeError)  # what it raised before
