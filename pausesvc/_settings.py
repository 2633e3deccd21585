"""The one typed settings object (environment prefix ``PAUSESVC_``).

CLI flags, the control service and the vLLM gate all read this object; ``docs/settings.md``
lists every field with its environment variable and default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pausesvc._keys import validate_holder, validate_namespace

__all__ = ["Settings"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAUSESVC_", extra="ignore")

    # --- Redis and the protocol ---------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        description="redis://, rediss://, unix:// or redis+sentinel:// URL. Unset: commands that "
        "need a server (demo, serve) start an embedded redis-server; others fail.",
    )
    namespace: str = Field(default="default", description="Deployment namespace (key prefix).")
    holder: str = Field(default="default", description="Holder used when none is given.")
    sharded_pubsub: Literal["auto", "on", "off"] = Field(
        default="auto", description="SPUBLISH/SSUBSCRIBE: auto = on Redis Cluster only."
    )
    replication_wait: int = Field(
        default=0, ge=0, description="After a change, WAIT for this many replicas (0: off)."
    )
    replication_wait_timeout_ms: int = Field(default=1000, ge=0)

    # --- the per-process view (PauseWatcher) ----------------------------------------------------
    resync_interval_s: float = Field(
        default=10.0, gt=0, description="Periodic full re-read of the state (safety net)."
    )
    health_check_interval_s: float = Field(
        default=2.0, gt=0, description="PING an idle pub/sub connection this often."
    )
    reconnect_max_backoff_s: float = Field(default=2.0, gt=0)
    on_data_loss: Literal["hold", "release"] = Field(
        default="hold",
        description="When the revision goes backwards (Redis lost its data): 'hold' keeps the "
        "adapters this process knew were paused held until a controller re-asserts or an "
        "operator resumes them; 'release' trusts the new, empty state.",
    )

    # --- replicas and drain ----------------------------------------------------------------------
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    replica_timeout_s: float = Field(
        default=5.0, gt=0, description="A replica silent this long is not live any more."
    )
    drain_timeout_s: float = Field(default=30.0, gt=0)

    # --- the gate (vLLM plugin) -------------------------------------------------------------------
    gate_paths: list[str] = Field(
        default_factory=lambda: [
            "/v1/completions",
            "/v1/chat/completions",
            "/v1/responses",
            "/inference/v1/generate",
        ],
        description="Generation paths the gate applies to (prefix match, trailing slash ignored).",
    )
    gate_extra_paths: list[str] = Field(default_factory=list)
    gate_policy: Literal["hold", "reject"] = "hold"
    gate_hold_timeout_s: float = Field(default=300.0, gt=0)
    gate_retry_after_s: int = Field(default=5, ge=0)
    gate_max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    gate_body_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline for receiving a request body (slow-loris)."
    )
    replica_url: str | None = Field(default=None, description="URL this replica advertises.")

    # --- the control service -----------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8470, ge=0, le=65535)
    api_token: str | None = Field(default=None, description="Bearer token for mutating calls.")
    auth_reads: bool = Field(default=False, description="Require the token for reads too.")
    log_level: str = "info"

    # --- security: credentials, request guards and memory caps (docs/security.md) --------------
    replica_control_token: str | None = Field(
        default=None,
        description="Gate: Bearer token for its mutating endpoints (/skyrl/v1/abort_lora_requests, "
        "/skyrl/v1/resume_lora_requests). Unset: api_token is used; neither set: the endpoints "
        "are open (a warning is logged at start) and pause as holder 'skyrl-anon'.",
    )
    gate_control_endpoints: Literal["on", "off"] = Field(
        default="on",
        description="Gate: 'off' answers 404 on its mutating endpoints (pause and resume only "
        "through a controller or the control service).",
    )
    gate_max_held_requests: int = Field(
        default=1000, ge=0, description="Gate: held requests per process; beyond: 503 hold_capacity."
    )
    gate_max_held_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="Gate: bytes of held request bodies per process; beyond: 503 hold_capacity.",
    )
    gate_max_held_requests_per_adapter: int = Field(
        default=256, ge=0, description="Gate: held requests per adapter (per process)."
    )
    gate_max_held_bytes_per_adapter: int = Field(
        default=16 * 1024 * 1024,
        ge=0,
        description="Gate: bytes of held request bodies per adapter (per process).",
    )
    gate_check_api_key: bool = Field(
        default=True,
        description="Gate: a request to a paused adapter on a /v1 path without vLLM's API key "
        "(--api-key / VLLM_API_KEY, read from the app's args) goes straight to vLLM (401) "
        "instead of being held.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Control service: Host header values accepted besides 127.0.0.1, localhost "
        "and [::1] (JSON list; '*' accepts any). Bound to a non-loopback host with this empty: "
        "any Host is accepted.",
    )
    max_event_streams: int = Field(
        default=256, ge=0, description="Control service: concurrent /v1/events streams; beyond: 503."
    )
    max_long_polls: int = Field(
        default=1024,
        ge=0,
        description="Control service: concurrent long-polls (/v1/pauses/{name}/wait, "
        "/skyrl/v1/wait_lora_unpaused); beyond: 503.",
    )

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        return validate_namespace(v)

    @field_validator("holder")
    @classmethod
    def _holder(cls, v: str) -> str:
        return validate_holder(v)

    # --- the embedded Redis of `pausesvc serve` (no redis_url; docs/operations.md) ---------------
    # (kept at the end of the class on purpose: other blocks are edited concurrently)
    data_dir: str | None = Field(
        default=None,
        description="`pausesvc serve` without redis_url: the directory where its embedded Redis "
        "keeps its append-only file (fsync every second) and a lock (one server per directory). "
        "Unset: $XDG_DATA_HOME/pausesvc/redis, else ~/.local/share/pausesvc/redis.",
    )
    ephemeral: bool = Field(
        default=False,
        description="`pausesvc serve` without redis_url: an embedded Redis that keeps nothing "
        "(a temporary directory, removed when it stops); pauses do not survive a restart.",
    )
