"""``pausesvc serve``: run the control service (and an embedded Redis when none is configured).

This module imports only click at import time, so every other CLI command stays fast; it raises
ImportError when the ``service`` extra is missing, which makes the core CLI register a stub.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from pausesvc._settings import Settings
    from pausesvc.devtools.embedded import DataDirLock, EmbeddedRedis

for _mod in ("fastapi", "uvicorn", "prometheus_client"):
    if importlib.util.find_spec(_mod) is None:  # pragma: no cover - depends on the install
        raise ImportError(f"pausesvc serve needs {_mod}: pip install 'pausesvc[service]'")

__all__ = ["serve"]


def _fail(code: int, message: str) -> NoReturn:
    click.echo(f"pausesvc: error: {message}", err=True)
    sys.exit(code)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET
    with_brackets = host.strip("[]")
    try:
        if isinstance(ipaddress.ip_address(with_brackets), ipaddress.IPv6Address):
            family = socket.AF_INET6
    except ValueError:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0] if infos else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((with_brackets, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)  # connections queue from now on: the URLs printed next already work
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


@click.command(
    epilog="Environment: every PAUSESVC_* setting (docs/settings.md); the API token "
    "only from PAUSESVC_API_TOKEN."
)
@click.option("--host", default=None, help="Interface to listen on (PAUSESVC_HOST, default 127.0.0.1).")
@click.option(
    "--port", type=int, default=None, help="TCP port (PAUSESVC_PORT, default 8470; 0 = any free port)."
)
@click.option(
    "--redis-url",
    "serve_redis_url",
    default=None,
    help="Redis to use (PAUSESVC_REDIS_URL). Unset: start an embedded redis-server.",
)
@click.option("--log-level", default=None, help="debug, info, warning, error (PAUSESVC_LOG_LEVEL).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Embedded Redis only: keep its append-only file here (PAUSESVC_DATA_DIR, "
    "default $XDG_DATA_HOME/pausesvc/redis or ~/.local/share/pausesvc/redis).",
)
@click.option(
    "--embedded-dir",
    "data_dir_alias",
    type=click.Path(file_okay=False),
    default=None,
    hidden=True,
    help="Old name of --data-dir.",
)
@click.option(
    "--ephemeral/--persistent",
    default=None,
    help="Embedded Redis only: keep nothing when it stops (PAUSESVC_EPHEMERAL; default: persistent).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    serve_redis_url: str | None,
    log_level: str | None,
    data_dir: str | None,
    data_dir_alias: str | None,
    ephemeral: bool | None,
) -> None:
    """Run the HTTP control service, the dashboard and /metrics."""
    data_dir = data_dir or data_dir_alias
    settings = _settings_from_flags(
        ctx,
        host=host,
        port=port,
        redis_url=serve_redis_url,
        log_level=log_level,
        data_dir=data_dir,
        ephemeral=ephemeral,
    )
    embedded: EmbeddedRedis | None = None
    lock: DataDirLock | None = None
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        _fail(1, f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    try:
        if not settings.redis_url:
            embedded, lock, kept = _start_embedded(settings)
            settings = settings.model_copy(update={"redis_url": embedded.url})
            _announce_embedded(settings, kept)
        else:
            from pausesvc._redis import redact

            click.echo(f"pausesvc: using Redis {redact(settings.redis_url)} (namespace {settings.namespace})")
        _announce_service(settings, sock)
        sys.stdout.flush()
        _run(settings, sock)
    finally:
        sock.close()
        if embedded is not None:
            embedded.cleanup()
        if lock is not None:
            lock.release()


def _settings_from_flags(ctx: click.Context, **flags: Any) -> Settings:
    """The settings of the command (or the environment) with the flags given on top; every
    mistake exits 2 naming the setting, before anything is started."""
    from pydantic import ValidationError

    from pausesvc._settings import Settings

    base: Settings = ctx.obj.settings if ctx.obj is not None else Settings()
    overrides = {key: value for key, value in flags.items() if value is not None}
    try:
        settings = Settings.model_validate({**base.model_dump(), **overrides})
    except ValidationError as exc:
        err = exc.errors()[0]
        _fail(2, f"invalid {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
    if settings.log_level.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
        _fail(2, f"invalid log_level: {settings.log_level!r}")
    data_dir, ephemeral = flags["data_dir"], flags["ephemeral"]
    if settings.ephemeral and data_dir:
        _fail(2, "invalid data_dir: --data-dir and --ephemeral exclude each other")
    if settings.redis_url and (data_dir or ephemeral is not None):
        _fail(
            2,
            "invalid data_dir: --data-dir and --ephemeral apply only to the embedded Redis "
            "(no --redis-url / PAUSESVC_REDIS_URL)",
        )
    if settings.redis_url:
        from pausesvc._exceptions import InvalidInputError
        from pausesvc._redis import check_url

        try:
            check_url(settings.redis_url)
        except InvalidInputError as exc:
            _fail(2, f"invalid redis_url: {exc}")
    return settings


def _announce_embedded(settings: Settings, kept: str) -> None:
    """Tell how to reach the embedded Redis: its URL is new to the user (and may change)."""
    click.echo(
        f"pausesvc: no PAUSESVC_REDIS_URL set: started an embedded redis-server "
        f"({kept}). Point replicas and the CLI at it:"
    )
    click.echo(f"    export PAUSESVC_REDIS_URL={settings.redis_url}")
    if settings.namespace != "default":
        click.echo(f"    export PAUSESVC_NAMESPACE={settings.namespace}")


def _announce_service(settings: Settings, sock: socket.socket) -> None:
    """Print where the service listens (the bound port: ``--port 0`` picks one) and warn when
    anyone who reaches it may change state."""
    bound_port = sock.getsockname()[1]
    base_url = f"http://{_url_host(settings.host)}:{bound_port}"
    click.echo(f"pausesvc: control service on {base_url}  (API docs: {base_url}/docs)")
    click.echo(f"pausesvc: dashboard: {base_url}/")
    if not settings.api_token:
        click.echo(
            "pausesvc: warning: PAUSESVC_API_TOKEN is not set: anyone who can reach "
            "this port can pause and resume adapters",
            err=True,
        )


def _start_embedded(settings: Settings) -> tuple[EmbeddedRedis, DataDirLock | None, str]:
    """Start the embedded Redis: ephemeral, or AOF in the locked data directory, on the port it
    had last time when that is free (the URL replicas and the CLI were given stays valid).
    Returns the server, the lock (None when ephemeral) and a phrase saying what is kept."""
    from pausesvc._exceptions import PauseError
    from pausesvc.devtools.embedded import (
        DataDirLock,
        EmbeddedRedis,
        default_data_dir,
        free_port,
        port_is_free,
    )

    if settings.ephemeral:
        embedded = EmbeddedRedis()
        try:
            embedded.start()
        except PauseError as exc:
            _fail(5, str(exc))
        return embedded, None, "--ephemeral: nothing is kept when it stops"
    directory = os.path.abspath(os.path.expanduser(settings.data_dir or default_data_dir()))
    lock = DataDirLock(directory)
    try:
        lock.acquire()
    except PauseError as exc:
        _fail(1, str(exc))
    previous = lock.previous_port()
    port = previous if previous is not None and port_is_free(previous) else None
    # appendfsync everysec: Redis write()s the AOF before it answers, so a pause survives any
    # death of the processes (SIGKILL included); only an OS crash can lose its last second
    embedded = EmbeddedRedis(
        port=port, appendonly=True, appendfsync="everysec", dir=directory, pass_fds=(lock.fileno(),)
    )
    try:
        try:
            embedded.start(timeout=60)  # a long AOF takes a moment to load
        except PauseError:
            if port is None or port_is_free(port, wait=0):
                raise
            embedded.port = free_port()  # taken between the check and the start
            embedded.start(timeout=60)
    except PauseError as exc:
        lock.release()
        _fail(5, f"{exc} (data directory {directory}; --ephemeral starts without it)")
    lock.record(url=embedded.url, port=embedded.port, redis_pid=embedded.pid)
    kept = f"its state is kept in {directory}"
    if previous is not None and previous != embedded.port:
        kept += f"; port {previous} of the last run is taken, so the URL changed"
    return embedded, lock, kept


def _run(settings: Any, sock: socket.socket) -> None:
    import uvicorn

    from pausesvc.service._app import create_app
    from pausesvc.service._logging import logging_config

    app = create_app(settings)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.svc.begin_shutdown()  # end event streams and long-polls at once
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        log_config=logging_config(settings.log_level),
        log_level=settings.log_level.lower(),
        ws="none",
        lifespan="on",
        timeout_graceful_shutdown=3,
        access_log=False,
    )

    # uvicorn re-raises the signal that stopped it once it has shut down; make that a clean
    # exit so the embedded Redis is stopped too (the default SIGTERM action would skip it)
    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, _exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
