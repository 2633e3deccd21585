"""The one typed settings object (environment prefix ``PAUSESVC_``).

CLI flags, the control service and the vLLM gate all read this object; ``docs/settings.md``
lists every field with its environment variable and default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pausesvc.protocol.keys import validate_holder, validate_namespace

__all__ = ["DEFAULT_UNGATED_PATHS", "Settings"]

#: Paths of vLLM 0.32's app that never generate or embed with an adapter (docs/vllm.md): the
#: gate passes them through. Everything else it is given (a route vLLM adds next release
#: included) is gated.
DEFAULT_UNGATED_PATHS: tuple[str, ...] = (
    # health, metrics, models, version (GET; listed so the allow-list is complete)
    "/health",
    "/ping",
    "/metrics",
    "/load",
    "/version",
    "/server_info",
    "/v1/models",
    # adapters: the weight sync a pause protects must go through while paused
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/adapters",
    "/adapters/*",
    # tokenize and render only (no engine request)
    "/tokenize",
    "/detokenize",
    "/v1/messages/count_tokens",
    "/v1/completions/render",
    "/v1/chat/completions/render",
    "/v1/messages/render",
    "/v1/responses/render",
    "/v1/completions/derender",
    "/v1/chat/completions/derender",
    "/v1/responses/*/cancel",
    # engine control (dev mode, RL weight transfer, elastic EP, sleep)
    "/pause",
    "/resume",
    "/is_paused",
    "/abort_requests",
    "/inference/v1/abort_requests",
    "/sleep",
    "/wake_up",
    "/is_sleeping",
    "/reset_prefix_cache",
    "/reset_mm_cache",
    "/reset_encoder_cache",
    "/release_kv_cache_memory",
    "/collective_rpc",
    "/init_weight_transfer_engine",
    "/update_weights",
    "/start_weight_update",
    "/finish_weight_update",
    "/start_draft_weight_update",
    "/shutdown_weight_transfer_engine",
    "/update_weight_version",
    "/weight_checker",
    "/weight_info",
    "/get_world_size",
    "/scale_elastic_ep",
    "/is_scaling_elastic_ep",
)


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
        default=1.0,
        gt=0,
        description="The view PINGs Redis on its subscription twice per "
        "interval; a PONG older than one interval means the link is dead (reconnect).",
    )
    command_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="Socket timeout of every Redis command connection "
        "(a dead link fails a call instead of hanging it). Watchers and gates use at most "
        "max(1, health_check_interval_s).",
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
        default=5.0,
        gt=0,
        description="A replica silent this long is not live any more "
        "(the drain barrier stops waiting for it). Must be >= fence_bound_s + fence_margin_s.",
    )
    fence_bound_s: float = Field(
        default=3.0,
        gt=0,
        description="A gate whose last proven round trip to Redis "
        "(heartbeat, or the view's PING/snapshot) is older than this fences itself: it "
        "behaves as if '*' were paused. Must be > heartbeat_interval_s and "
        "> health_check_interval_s.",
    )
    fence_margin_s: float = Field(
        default=1.0,
        ge=0,
        description="Slack between a replica fencing itself and the "
        "barrier dropping it (clock rates, scheduling).",
    )
    drain_timeout_s: float = Field(default=30.0, gt=0)

    # --- the gate (vLLM plugin) -------------------------------------------------------------------
    gate_ungated_paths: list[str] = Field(
        default_factory=lambda: list(DEFAULT_UNGATED_PATHS),
        description="The allow-list: paths known not to generate, passed through untouched "
        "(every other POST, PUT, PATCH or DELETE path, and every websocket, is gated). Exact "
        "match after normalization; a '*' or '{param}' segment matches any one segment.",
    )
    gate_extra_ungated_paths: list[str] = Field(
        default_factory=list,
        description="More paths to pass through ungated, added to gate_ungated_paths (JSON list).",
    )
    gate_extra_paths: list[str] = Field(
        default_factory=list,
        description="Paths gated even when they are on the allow-list (wins over it; prefix "
        "match, sub-paths included).",
    )
    base_model_names: list[str] = Field(
        default_factory=list,
        description="More names of the base model, beside those the gate reads from vLLM at "
        "start (--served-model-name, the model path): a pause of any of them, or of a request "
        "naming no model, is a pause of the base model.",
    )
    gate_policy: Literal["hold", "reject"] = "hold"
    gate_hold_timeout_s: float = Field(default=300.0, gt=0)
    gate_deadline_response: Literal["abort", "503"] = Field(
        default="abort",
        description="Gate: what a request held until gate_hold_timeout_s gets on "
        "/v1/completions and /v1/chat/completions: 'abort' = zero tokens with finish_reason "
        "'abort' (what the drain's aborted requests get; SkyRL/Tinker clients wait and resubmit), "
        "'503' = 503 adapter_paused with Retry-After. Other paths always get the 503.",
    )
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
    max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        description="Control service: request body cap, checked before anything reads the "
        "body (413 over it; a change's body is a few hundred bytes).",
    )

    @model_validator(mode="after")
    def _fence_inequality(self) -> Settings:
        """The barrier may drop a silent replica only once it has surely fenced itself."""
        if self.fence_bound_s <= max(self.heartbeat_interval_s, self.health_check_interval_s):
            raise ValueError(
                f"fence_bound_s ({self.fence_bound_s:g}) must be greater than "
                f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) and "
                f"health_check_interval_s ({self.health_check_interval_s:g}): a healthy "
                "replica would fence itself between two round trips"
            )
        if self.replica_timeout_s < self.fence_bound_s + self.fence_margin_s:
            raise ValueError(
                f"replica_timeout_s ({self.replica_timeout_s:g}) must be >= fence_bound_s "
                f"({self.fence_bound_s:g}) + fence_margin_s ({self.fence_margin_s:g}): the "
                "drain barrier would drop a silent replica before it has fenced itself"
            )
        return self

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
