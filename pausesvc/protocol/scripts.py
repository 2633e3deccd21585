"""The Lua scripts (in ``lua/``), assembled with their prelude. Each file says what it guarantees."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

__all__ = ["read_script", "registry_script", "state_script"]

STATE_SCRIPTS = ("pause", "resume", "renew", "reap", "set_version")
REGISTRY_SCRIPTS = ("heartbeat", "ack", "version_report")
READ_SCRIPTS = ("snapshot", "replicas")


def _read(name: str) -> str:
    return files("pausesvc.protocol").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


@cache
def state_script(name: str) -> str:
    """Source of a state-changing script: the shared prelude, then its body."""
    if name not in STATE_SCRIPTS:
        raise KeyError(name)
    return _read("_common") + "\n" + _read(name)


@cache
def registry_script(name: str) -> str:
    if name not in REGISTRY_SCRIPTS:
        raise KeyError(name)
    return _read("registry_common") + "\n" + _read(name)


@cache
def read_script(name: str) -> str:
    """Source of a read-only script (``#!lua flags=no-writes``)."""
    if name not in READ_SCRIPTS:
        raise KeyError(name)
    return _read(name)
