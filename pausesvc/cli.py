"""The ``pausesvc`` command line.

Exit codes: 0 success, 2 invalid input, 3 wait timed out, 4 refused (stale token, not a
holder, drain not acknowledged), 5 Redis unreachable, 6 swap incomplete (some live replicas
did not load the version, or failed to), 1 anything else.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from pausesvc._exceptions import (
    ConflictError,
    DrainTimeoutError,
    InvalidInputError,
    PauseError,
    RedisUnavailableError,
    SwapError,
)
from pausesvc._settings import Settings
from pausesvc.client._blocking import PauseClient
from pausesvc.devtools.embedded import running_embedded_url
from pausesvc.protocol.models import AdapterState, DesiredVersion

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_INVALID, EXIT_TIMEOUT, EXIT_REFUSED, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
EXIT_SWAP = 6

F = TypeVar("F", bound=Callable[..., Any])

EPILOG = """\b
Exit codes:
  0  success
  2  invalid input (nothing was changed)
  3  wait timed out (the adapter is still paused)
  4  refused: stale token, not a holder, or drain not acknowledged in time
  5  Redis unreachable
  6  swap incomplete: the version is set, but some live replicas did not load it
     in time or failed to (named on stderr)
\b
Environment: PAUSESVC_REDIS_URL, PAUSESVC_NAMESPACE and every PAUSESVC_* setting
(see docs/settings.md)."""


def _fail(code: int, message: str) -> None:
    click.echo(f"pausesvc: error: {message}", err=True)
    sys.exit(code)


#: the exit code of an error: the first class it is an instance of (else EXIT_ERROR)
_EXIT_CODES: tuple[tuple[type[PauseError], int], ...] = (
    (SwapError, EXIT_SWAP),
    (DrainTimeoutError, EXIT_REFUSED),
    (InvalidInputError, EXIT_INVALID),
    (ConflictError, EXIT_REFUSED),
    (RedisUnavailableError, EXIT_UNAVAILABLE),
)


def _exit_code(exc: PauseError) -> int:
    return next((code for cls, code in _EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


def handle_errors(fn: F) -> F:
    """Every error becomes one readable line on stderr and a documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PauseError as exc:
            _fail(_exit_code(exc), str(exc))
        except KeyboardInterrupt:
            _fail(130, "interrupted")
        return None

    return wrapper  # type: ignore[return-value]


class Ctx:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def client(self) -> PauseClient:
        if not self.settings.redis_url:
            url = running_embedded_url(self.settings.data_dir)
            if url is None:
                raise InvalidInputError(
                    "no Redis URL: pass --redis-url or set PAUSESVC_REDIS_URL (no "
                    "`pausesvc serve` with an embedded Redis is running for this user)",
                    field="redis_url",
                )
            click.echo(f"pausesvc: using the embedded Redis of `pausesvc serve` at {url}", err=True)
            self.settings = self.settings.model_copy(update={"redis_url": url})
        return PauseClient(settings=self.settings)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    d = now - ts
    return f"{d:.1f}s ago" if d >= 0 else f"in {-d:.1f}s"


def _describe(state: AdapterState, now: float) -> str:
    parts = []
    for h in sorted(state.holders.values(), key=lambda h: h.token):
        bits = [f"token {h.token}", f"since {_ago(h.since, now)}"]
        if h.reason:
            bits.append(f"reason {h.reason!r}")
        if h.expires_at is not None:
            bits.append(f"lease ends in {max(0.0, h.expires_at - now):.1f}s")
        else:
            bits.append("no lease")
        parts.append(f"    holder {h.holder}: " + ", ".join(bits))
    head = f"{state.name}  paused since {_ago(state.since, now)}  (revision {state.revision})"
    return "\n".join([head, *parts])


def _describe_version(dv: DesiredVersion, now: float) -> str:
    load = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(dv.load.items()))
    return (
        f"{dv.name}  desired version {dv.version}  path {dv.path}"
        f"{'  load ' + load if load else ''}  (set {_ago(dv.at, now)}, revision {dv.revision})"
    )


def _parse_load(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that is JSON true/false/null/a number is taken as such."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"--load takes KEY=VALUE, got {item!r}", field="load")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key] = value if value is None or isinstance(value, (bool, int, float)) else raw
    return out


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url",
    envvar="PAUSESVC_REDIS_URL",
    default=None,
    help="redis://, rediss://, unix:// or redis+sentinel:// URL.",
)
@click.option(
    "--namespace", envvar="PAUSESVC_NAMESPACE", default=None, help="Deployment namespace (default: default)."
)
@click.version_option(package_name="pausesvc")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, namespace: str | None) -> None:
    """Distributed pause state for multi-LoRA LLM serving, kept in Redis."""
    overrides: dict[str, Any] = {}
    if redis_url is not None:
        overrides["redis_url"] = redis_url
    if namespace is not None:
        overrides["namespace"] = namespace
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        _fail(EXIT_INVALID, f"invalid {field}: {err['msg']}")
    ctx.obj = Ctx(settings)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, sort_keys=True))


@cli.command(epilog=EPILOG)
@click.argument("name")
@click.option("--holder", default=None, help="Who holds this pause (default: the default holder).")
@click.option("--reason", default=None, help="Free text shown in status.")
@click.option("--ttl", type=float, default=None, help="Lease in seconds; renew or it expires.")
@click.option("--drain", is_flag=True, help="Return once every live replica drained NAME.")
@click.option("--timeout", type=float, default=None, help="Drain deadline in seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the grant as JSON.")
@click.pass_obj
@handle_errors
def pause(
    obj: Ctx,
    name: str,
    holder: str | None,
    reason: str | None,
    ttl: float | None,
    drain: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Pause adapter NAME (`*` pauses everything). Prints the fencing token."""
    if timeout is not None and not drain:
        raise click.UsageError("--timeout bounds the wait for a drain: add --drain, or drop --timeout")
    with obj.client() as c:
        grant = c.pause(name, holder=holder, reason=reason, ttl=ttl, drain=drain, timeout=timeout)
    if as_json:
        _print_json(grant.to_dict())
    else:
        click.echo(grant.token)


@cli.command(epilog=EPILOG)
@click.argument("name")
@click.option("--holder", default=None, help="Release this holder's hold.")
@click.option("--token", default=None, help="Fencing token from `pause`.")
@click.option("--force", is_flag=True, help="Release every hold.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def resume(obj: Ctx, name: str, holder: str | None, token: str | None, force: bool, as_json: bool) -> None:
    """Release a hold on NAME; NAME resumes when no hold remains."""
    with obj.client() as c:
        res = c.resume(name, holder=holder, token=token, force=force)
    if as_json:
        _print_json(res.to_dict())
    elif res.paused and res.state is not None:
        click.echo(f"released; {name} stays paused by: {', '.join(sorted(res.state.holders))}")
    else:
        click.echo("resumed" if res.released else f"{name} was not paused")


@cli.command(epilog=EPILOG)
@click.argument("name")
@click.option("--ttl", type=float, required=True, help="New lease length in seconds.")
@click.option("--holder", default=None)
@click.option("--token", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def renew(obj: Ctx, name: str, ttl: float, holder: str | None, token: str | None, as_json: bool) -> None:
    """Extend a hold's lease on NAME to TTL seconds from now."""
    with obj.client() as c:
        state = c.renew(name, holder, ttl, token=token)
    if as_json:
        _print_json(state.to_dict())
    else:
        click.echo(_describe(state, time.time()))


def _describe_orphan(name: str, replicas: list[str]) -> str:
    return (
        f"{name}  HELD AS AN ORPHAN by {len(replicas)} live replica(s): Redis lost its pause "
        f"without a resume ({', '.join(replicas)}); `pausesvc resume {name} --force` releases it"
    )


@cli.command(epilog=EPILOG)
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def status(obj: Ctx, name: str | None, as_json: bool) -> None:
    """Every paused adapter (holders, reason, since, lease expiry, revision), or NAME."""
    from pausesvc.protocol.codec import orphans_on

    with obj.client() as c:
        if name is not None:
            from pausesvc.protocol.keys import validate_name

            validate_name(name)
        snap = c.snapshot()
        orphaned = orphans_on(c.replicas())  # what the fleet holds that Redis lost
    if name is not None:
        state = snap.paused.get(name)
        desired = snap.versions.get(name)
        if as_json:
            _print_json(
                {
                    "name": name,
                    "paused": state is not None,
                    "paused_by_global": "*" in snap.paused,
                    "revision": snap.revision,
                    "state": state.to_dict() if state else None,
                    "version": desired.to_dict() if desired else None,
                    "orphaned": orphaned.get(name, []),
                }
            )
            return
        if state is None:
            extra = " (but `*` is paused: everything is)" if "*" in snap.paused else ""
            click.echo(f"{name} is not paused{extra}  (revision {snap.revision})")
        else:
            click.echo(_describe(state, snap.server_time))
        if name in orphaned:
            click.echo(_describe_orphan(name, orphaned[name]))
        if desired is not None:
            click.echo(_describe_version(desired, snap.server_time))
        return
    if as_json:
        _print_json({**snap.to_dict(), "orphaned": orphaned})
        return
    if not snap.paused:
        click.echo(f"nothing is paused  (revision {snap.revision})")
    for st in sorted(snap.paused.values(), key=lambda s: s.name):
        click.echo(_describe(st, snap.server_time))
    for orphan, holders in orphaned.items():
        click.echo(_describe_orphan(orphan, holders))
    for dv in sorted(snap.versions.values(), key=lambda d: d.name):
        click.echo(_describe_version(dv, snap.server_time))


@cli.command(epilog=EPILOG)
@click.argument("name")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 3).")
@click.pass_obj
@handle_errors
def wait(obj: Ctx, name: str, timeout: float | None) -> None:
    """Return as soon as NAME is not paused."""
    with obj.client() as c:
        ok = c.wait_unpaused(name, timeout=timeout)
    if not ok:
        _fail(EXIT_TIMEOUT, f"{name} is still paused after {timeout:g}s")
    click.echo(f"{name} is not paused")


@cli.command(epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N changes.")
@click.pass_obj
@handle_errors
def watch(obj: Ctx, as_json: bool, count: int | None) -> None:
    """Print one line per change as it happens."""
    seen = 0
    with obj.client() as c:
        for ev in c.events():
            if as_json:
                _print_json(ev.to_dict())
            else:
                who = f" by {ev.holder}" if ev.holder else ""
                state = "paused" if ev.paused else "not paused"
                stamp = time.strftime("%H:%M:%S", time.localtime(ev.ts))
                if ev.op == "version":
                    state = "desired version " + (ev.version.version if ev.version else "cleared")
                click.echo(f"{stamp} rev {ev.revision} {ev.op:<8} {ev.name}{who} -> {state}")
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                return


@cli.command(epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True)
@click.option("--all", "include_dead", is_flag=True, help="Include replicas that stopped heartbeating.")
@click.pass_obj
@handle_errors
def replicas(obj: Ctx, as_json: bool, include_dead: bool) -> None:
    """Live replica processes: heartbeat age, what each holds and what each has drained."""
    with obj.client() as c:
        recs = c.replicas(include_dead=include_dead)
    if as_json:
        _print_json(recs)
        return
    if not recs:
        click.echo("no live replica processes")
    for r in recs:
        drains = ", ".join(f"{n}@{d.get('rev')}" for n, d in sorted(r.get("drains", {}).items()))
        click.echo(
            f"{r['id']}  {'live' if r.get('live') else 'DEAD'}  heartbeat {r['heartbeat_age_s']:.1f}s ago"
            f"  url={r.get('url', '-')} pid={r.get('pid', '-')} held={r.get('held', '0')}"
            f"  drained: {drains or '-'}  versions: {_loaded_versions(r)}"
        )


def _loaded_versions(rec: dict[str, Any]) -> str:
    """``lora-a@v2, lora-b@v7(failed: reason)``: what a replica reported per adapter."""
    parts = []
    for n, v in sorted(rec.get("versions", {}).items()):
        status = v.get("status", "?")
        tail = "" if status == "loaded" else f"({status}{': ' + str(v['reason']) if v.get('reason') else ''})"
        parts.append(f"{n}@{v.get('version', '?')}{tail}")
    return ", ".join(parts) or "-"


@cli.command(epilog=EPILOG)
@click.argument("name")
@click.option("--version", "version", required=True, help="The version label (opaque).")
@click.option("--path", "path", required=True, help="Where the weights are (lora_path).")
@click.option("--load", "load", multiple=True, metavar="KEY=VALUE", help="Extra load_lora_adapter field.")
@click.option("--no-barrier", is_flag=True, help="Set the version and return: replicas converge alone.")
@click.option("--timeout", type=float, default=None, help="Barrier deadline in seconds.")
@click.option("--holder", default=None, help="Holder of the swap's pause (default: <holder>/swap).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def swap(
    obj: Ctx,
    name: str,
    version: str,
    path: str,
    load: tuple[str, ...],
    no_barrier: bool,
    timeout: float | None,
    holder: str | None,
    as_json: bool,
) -> None:
    """Move NAME to weight VERSION on every replica: pause with drain, set it, wait until
    every live replica loaded it, resume (exit 6 naming those that did not)."""
    fields = _parse_load(load)
    with obj.client() as c:
        res = c.swap(name, version, path, load=fields, barrier=not no_barrier, timeout=timeout, holder=holder)
    if as_json:
        _print_json(res.to_dict())
    elif no_barrier:
        click.echo(f"{name} -> {res.version} set (revision {res.revision}); replicas converge on their own")
    else:
        who = ", ".join(res.loaded) or "no live replicas"
        click.echo(f"{name} -> {res.version} loaded by {who} in {res.seconds:.2f}s (revision {res.revision})")


@cli.command(epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@handle_errors
def versions(obj: Ctx, as_json: bool) -> None:
    """Every adapter's desired weight version."""
    with obj.client() as c:
        found = c.versions()
        now = c.snapshot().server_time
    if as_json:
        _print_json({n: dv.to_dict() for n, dv in sorted(found.items())})
        return
    if not found:
        click.echo("no desired versions")
    for dv in sorted(found.values(), key=lambda d: d.name):
        click.echo(_describe_version(dv, now))


@cli.command()
@click.option("--speed", type=float, default=1.0, help="Time scale (2 = twice as fast).")
@click.pass_obj
@handle_errors
def demo(obj: Ctx, speed: float) -> None:
    """A self-contained demonstration: embedded Redis, a controller and waiting samplers."""
    from pausesvc.devtools.demo import run_demo

    if speed <= 0:
        raise InvalidInputError("--speed must be > 0", field="speed")
    asyncio.run(run_demo(obj.settings, speed=speed))


def _register_optional() -> None:
    try:
        from pausesvc.service.cli import serve
    except ImportError:

        @cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        def serve() -> None:
            """Run the HTTP control service (needs `pip install pausesvc[service]`)."""
            _fail(EXIT_ERROR, "the control service needs its extra: pip install 'pausesvc[service]'")
    else:
        cli.add_command(serve)


_register_optional()


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors are one line on stderr and exit code 2, like every error."""
    try:
        rv = cli.main(args=argv, prog_name="pausesvc", standalone_mode=False)
    except click.UsageError as exc:
        hint = f" (see `pausesvc {exc.ctx.info_name if exc.ctx else ''} --help`)"
        _fail(EXIT_INVALID, exc.format_message() + hint.replace("pausesvc pausesvc", "pausesvc"))
    except click.ClickException as exc:
        _fail(EXIT_INVALID, exc.format_message())
    except click.exceptions.Abort:
        _fail(130, "aborted")
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
