"""The HTTP control service (``pip install 'pausesvc[service]'``; run with ``pausesvc serve``).

The core never imports this package. ``create_app`` is imported on first use, so that the CLI
(which registers ``serve`` from ``pausesvc.service.cli``) starts without importing FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pausesvc.service._app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from pausesvc.service._app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
