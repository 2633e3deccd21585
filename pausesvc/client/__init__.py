"""The clients a controller or a sampler holds: :class:`AsyncPauseClient` (asyncio) and
:class:`PauseClient` (blocking), on the shared configuration and argument/reply handling of
``_base``; the drain and version barriers are ``_drain``."""

from pausesvc._exceptions import SwapError
from pausesvc.client._async import AsyncPauseClient, release_watcher, shared_watcher
from pausesvc.client._blocking import PauseClient

__all__ = ["AsyncPauseClient", "PauseClient", "SwapError", "release_watcher", "shared_watcher"]
