"""The replica side of the registry, public: what a serving process (the vLLM gate) does.

    replica = Replica(client, "host-1:8000:4242")
    await replica.heartbeat({"url": "http://host-1:8000", "pid": "4242"})   # every few seconds
    await replica.acknowledge("lora-a", ev.revision, aborted, epoch=ev.epoch, tokens=[...])
    await replica.report_version("lora-a", "step-100", status="loaded", revision=dv.revision)
    await replica.leave()                                                   # on shutdown

Records (``pausesvc:{ns}:replica:<id>``, see docs/protocol.md): ``drain:<name>`` (``ack.lua``)
and ``version:<name>`` (``version_report.lua``), each also published on the ``acks`` channel in
the same atomic step, so a controller that subscribed first never misses one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from pausesvc._exceptions import InvalidInputError, translate_redis_errors
from pausesvc._redis import retry_stale
from pausesvc.client._async import AsyncPauseClient
from pausesvc.protocol.keys import validate_name, validate_version
from pausesvc.protocol.models import Grant
from pausesvc.protocol.validate import number_from_text, validate_reason, validate_timeout

__all__ = ["Replica", "VersionStatus", "parse_wait_timeout"]

VersionStatus = Literal["loaded", "loading", "failed"]
_STATUSES = ("loaded", "loading", "failed")


class Replica:
    """One serving process in the registry of ``client``'s namespace. Owns no connection: the
    client does (close the client, after :meth:`leave`)."""

    def __init__(self, client: AsyncPauseClient, replica_id: str) -> None:
        self.client = client
        self.id = validate_name(replica_id, field="replica_id")

    def _keys(self) -> list[str]:
        k = self.client.keys
        return [k.replicas, k.replica(self.id), k.acks]

    async def heartbeat(self, fields: Mapping[str, str]) -> None:
        """Mark this process alive (Redis clock) and merge ``fields`` into its record."""
        await self.client._heartbeat(self.id, dict(fields))

    async def acknowledge(
        self,
        name: str,
        revision: int,
        aborted: Sequence[str],
        *,
        epoch: str | None,
        tokens: Sequence[str] | None,
    ) -> None:
        """No request of ``name`` is in flight here for the pause learned at ``revision``
        (``aborted``: the request ids this process aborted for it)."""
        await self.client._ack(
            self.id,
            validate_name(name),
            int(revision),
            list(aborted),
            epoch=epoch,
            tokens=None if tokens is None else list(tokens),
        )

    async def report_version(
        self,
        name: str,
        version: str,
        *,
        status: VersionStatus,
        revision: int,
        reason: str | None = None,
        attempts: int = 0,
    ) -> None:
        """Record (``version:<name>``) and publish which weight version of ``name`` this
        process has ``loaded`` / is ``loading`` / ``failed`` to load, for the desired version
        set at ``revision``. A swap's barrier counts ``loaded`` (and ``failed``) reports of its
        version at its revision or later."""
        if status not in _STATUSES:
            raise InvalidInputError(f"status must be one of {', '.join(_STATUSES)}", field="status")
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise InvalidInputError("attempts must be an integer >= 0", field="attempts")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise InvalidInputError("revision must be an integer >= 0", field="revision")
        record = {
            "replica": self.id,
            "name": validate_name(name),
            "version": validate_version(version),
            "status": status,
            "reason": validate_reason(reason) or None,
            "attempts": attempts,
            "rev": revision,
            "ts": time.time(),
        }
        c = self.client
        args = [c.publish_command, self.id, name, json.dumps(record)]
        with translate_redis_errors():  # idempotent (the same record again): retried once
            await retry_stale(c.redis, lambda: c._version_report_script(keys=self._keys(), args=args))

    async def leave(self) -> None:
        """Leave the registry now (a drain barrier stops waiting for this process)."""
        await self.client._deregister(self.id)

    async def pause_for_drain(self, name: str, *, holder: str | None, reason: str | None) -> Grant:
        """Pause ``name`` fleet-wide asking every replica to drain it, WITHOUT waiting for the
        acknowledgements (the caller waits for the ones it cares about, e.g. its own)."""
        h, args = self.client._pause_args(name, holder, reason, None, drain=True)
        return self.client._parse_grant(name, h, await self.client._run("pause", args))


def parse_wait_timeout(value: object, *, field: str = "timeout_s") -> float:
    """A wait's timeout as a replica's endpoint receives it (SkyRL's contract): a number of
    seconds >= 0, or a numeric string (``"0.3"``, which SkyRL's server accepted). Raises
    :class:`~pausesvc.InvalidInputError` naming ``field`` otherwise."""
    timeout = validate_timeout(number_from_text(value), field=field, allow_none=False)
    assert timeout is not None
    return timeout
