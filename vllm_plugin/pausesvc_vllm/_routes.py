"""Which requests the gate looks at: every path but an allow-list, and the app's route table.

The rule (fail closed): an HTTP request whose method is not ``GET``, ``HEAD`` or ``OPTIONS``
is gated unless its path is on the allow-list (``gate_ungated_paths`` +
``gate_extra_ungated_paths``: paths known not to generate); every websocket is gated;
``gate_extra_paths`` are gated even if allow-listed. A route vLLM adds next release is
therefore gated by default.

Allow-list entries match the whole normalized path (``//tokenize/`` is ``/tokenize``), not a
prefix: ``/v1/completions/render`` is listed, ``/v1/completions/anything-else`` stays gated.
A ``*`` (or ``{param}``) segment matches any one segment: ``/adapters/*`` is
``DELETE /adapters/{adapter_name}``.

:func:`route_table` lists the routes of the app the gate wraps (read at lifespan startup) with
the decision for each; ``GET /pausesvc/routes`` answers it, and the end-to-end tests fail when a
route that can change state is neither gated nor deliberately allow-listed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pausesvc_vllm._asgi import PathMatcher, Scope, normalize_path, route_path

__all__ = ["LOAD_PATH", "OWN_PREFIXES", "REGISTER_PATH", "SAFE_METHODS", "GatedPaths", "route_table"]

#: Methods never gated: they read, they do not generate (no vLLM route generates on GET).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: the gate's own paths (``_endpoints.py``: the SkyRL steps, status, metrics, routes)
OWN_PREFIXES = ("/skyrl/v1/", "/pausesvc/")
#: vLLM's direct adapter load (``_loads.py``)
LOAD_PATH = "/v1/load_lora_adapter"
#: SageMaker's adapter registration: the same load (``_loads.py``)
REGISTER_PATH = "/adapters"


def _segments(path: str) -> tuple[str, ...]:
    return tuple(p for p in normalize_path(path).split("/") if p)


def _wild(segment: str) -> bool:
    return segment == "*" or (segment.startswith("{") and segment.endswith("}") and ":path}" not in segment)


class _Patterns:
    """Whole-path patterns; a ``*`` or ``{param}`` segment matches one segment."""

    def __init__(self, paths: Iterable[str]) -> None:
        exact: set[tuple[str, ...]] = set()
        wild: set[tuple[str, ...]] = set()
        for p in paths:
            segs = _segments(p)
            (wild if any(_wild(s) for s in segs) else exact).add(segs)
        self.exact = frozenset(exact)
        self.wild = tuple(sorted(wild))

    def __call__(self, segs: tuple[str, ...], *, template: bool = False) -> bool:
        """Does the path (a request's, or with ``template`` a route's) match an entry?

        A route template's own ``{param}`` segment is matched only by a wildcard entry.
        """
        if segs in self.exact and not (template and any(_wild(s) for s in segs)):
            return True
        for pat in self.wild:
            if len(pat) == len(segs) and all(
                _wild(p) or (p == s and not (template and _wild(s))) for p, s in zip(pat, segs, strict=True)
            ):
                return True
        return False


class GatedPaths:
    """Is a request gated? Built once from the settings; answers per request."""

    def __init__(self, ungated: Iterable[str], forced: Iterable[str] = ()) -> None:
        self.ungated = _Patterns(ungated)
        self.forced = PathMatcher(forced)

    def gated(self, scope: Scope) -> bool:
        """For an ``http`` scope: is it a method and path the gate looks at?"""
        if scope.get("method") in SAFE_METHODS:
            return False
        return self.path_gated(route_path(scope), scope)

    def path_gated(self, path: str, scope: Scope | None = None) -> bool:
        if self.forced.paths and self.forced({"path": path} if scope is None else scope):
            return True
        return not self.ungated(_segments(path))

    def template_gated(self, method: str, template: str) -> bool:
        """The decision for a route of the app (``template`` may hold ``{param}`` segments)."""
        if method in SAFE_METHODS:
            return False
        if self.forced.paths and self.forced({"path": template}):
            return True
        return not self.ungated(_segments(template), template=True)


def _walk(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method or 'WEBSOCKET', path template) for every route, mounts included."""
    for r in routes:
        path = prefix + str(getattr(r, "path", ""))
        sub = getattr(r, "routes", None)
        methods = getattr(r, "methods", None)
        if methods:
            for m in sorted(methods):
                yield str(m), path
        elif type(r).__name__ == "WebSocketRoute":
            yield "WEBSOCKET", path
        elif sub is not None:  # a Mount (or a router): its routes, under its path
            yield from _walk(sub, path)
        else:
            yield "*", path  # something else (a raw ASGI endpoint): any method


def route_table(app: Any, paths: GatedPaths) -> list[dict[str, Any]]:
    """Every route of ``app`` (a Starlette/FastAPI app; [] otherwise) with the gate's decision:
    ``{"method", "path", "gated"}``, sorted by path then method."""
    routes = getattr(app, "routes", None)
    if routes is None:
        return []
    table = []
    for method, template in sorted(set(_walk(routes)), key=lambda mp: (mp[1], mp[0])):
        gated = method == "WEBSOCKET" or paths.template_gated("POST" if method == "*" else method, template)
        table.append({"method": method, "path": template, "gated": gated})
    return table
