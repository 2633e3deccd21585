"""Every Redis key and channel name pausesvc uses is built here, and only here.

All keys and channels of one namespace share the hash tag ``{<namespace>}`` so that every
multi-key script runs on Redis Cluster (one slot per namespace).

    pausesvc:{ns}:rev         STRING  namespace revision (INCR by every change)
    pausesvc:{ns}:epoch       STRING  id of this incarnation of the namespace (set with the first rev)
    pausesvc:{ns}:paused      HASH    adapter name -> JSON state (holders, since, rev)
    pausesvc:{ns}:leases      ZSET    "<name> <holder>" -> lease expiry (ms, Redis clock)
    pausesvc:{ns}:tombstones  ZSET    adapter name -> revision of its last resume (newest 10,000)
    pausesvc:{ns}:events      CHANNEL one JSON event per revision
    pausesvc:{ns}:replicas    ZSET    replica process id -> last heartbeat (ms, Redis clock)
    pausesvc:{ns}:replica:<id> HASH   that process's record (url, pid, version, drains...)
    pausesvc:{ns}:acks        CHANNEL one JSON message per drain acknowledgement or version report
    pausesvc:{ns}:versions    HASH    adapter name -> JSON desired weight version (version, path, load)
    pausesvc:{ns}:cleared_versions ZSET adapter name -> revision its desired version was cleared at
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pausesvc._exceptions import InvalidInputError, InvalidNameError

__all__ = ["GLOBAL", "MAX_NAME_LENGTH", "Keys", "validate_holder", "validate_name", "validate_version"]

#: The reserved adapter name that pauses every adapter and the base model.
GLOBAL = "*"
MAX_NAME_LENGTH = 256
PREFIX = "pausesvc"

# No whitespace, no control characters (C0, DEL, C1), no Unicode separators, no lone
# surrogates (they cannot be encoded as UTF-8, so Redis could never store the name).
_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029\u200b\ufeff\ud800-\udfff]")


def validate_name(name: object, *, field: str = "name") -> str:
    """Return ``name`` if it is an acceptable adapter name, else raise :class:`InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{field} must be a string, not {type(name).__name__}", field=field)
    if not name:
        raise InvalidNameError(f"{field} must not be empty", field=field)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidNameError(
            f"{field} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}", field=field
        )
    bad = _BAD_CHAR.search(name)
    if bad:
        raise InvalidNameError(
            f"{field} contains a whitespace or control character ({bad.group()!r}) at position {bad.start()}",
            field=field,
        )
    return name


def validate_holder(holder: object) -> str:
    """Holders follow the adapter-name rules; ``*`` is allowed as a holder."""
    return validate_name(holder, field="holder")


def validate_version(version: object) -> str:
    """A weight version label: an opaque non-empty string, with the adapter-name rules."""
    return validate_name(version, field="version")


def validate_namespace(namespace: object) -> str:
    ns = validate_name(namespace, field="namespace")
    if any(c in ns for c in "{}:*"):
        raise InvalidInputError("namespace must not contain '{', '}', ':' or '*'", field="namespace")
    return ns


@dataclass(frozen=True)
class Keys:
    """The names of one namespace's keys and channels."""

    namespace: str

    def __post_init__(self) -> None:
        validate_namespace(self.namespace)

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{{self.namespace}}}"

    @property
    def rev(self) -> str:
        return f"{self.tag}:rev"

    @property
    def epoch(self) -> str:
        return f"{self.tag}:epoch"

    @property
    def paused(self) -> str:
        return f"{self.tag}:paused"

    @property
    def leases(self) -> str:
        return f"{self.tag}:leases"

    @property
    def tombstones(self) -> str:
        return f"{self.tag}:tombstones"

    @property
    def events(self) -> str:
        return f"{self.tag}:events"

    @property
    def replicas(self) -> str:
        return f"{self.tag}:replicas"

    def replica(self, replica_id: str) -> str:
        return f"{self.tag}:replica:{replica_id}"

    @property
    def acks(self) -> str:
        return f"{self.tag}:acks"

    @property
    def versions(self) -> str:
        return f"{self.tag}:versions"

    @property
    def cleared_versions(self) -> str:
        return f"{self.tag}:cleared_versions"

    def version_keys(self) -> list[str]:
        """KEYS of ``set_version.lua``: the state keys, then versions and cleared_versions."""
        return [*self.state_keys(), self.versions, self.cleared_versions]

    def snapshot_keys(self) -> list[str]:
        """KEYS of ``snapshot.lua``: paused, rev, epoch, versions."""
        return [self.paused, self.rev, self.epoch, self.versions]

    def state_keys(self) -> list[str]:
        """KEYS of every state-changing script, in the order the scripts expect."""
        return [self.paused, self.rev, self.leases, self.events, self.epoch, self.tombstones]
