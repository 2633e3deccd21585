"""The wire shapes of the control service: every request body, every response, every error.

Request bodies are strict (no type coercion: ``"5"`` is not a number, ``1`` is not a boolean)
and refuse unknown fields, so a typo such as ``{"ttl": 5}`` is a 422 naming ``ttl`` instead of a
pause without a lease. Responses mirror the ``to_dict()`` of the core models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)
from pydantic.config import JsonDict, JsonValue

from pausesvc.protocol.keys import MAX_NAME_LENGTH, validate_holder, validate_name, validate_version
from pausesvc.protocol.validate import (
    MAX_LOAD_FIELDS,
    MAX_PATH_LENGTH,
    MAX_REASON_LENGTH,
    MAX_TTL_S,
    RESERVED_LOAD_KEYS,
    number_from_text,
    validate_load,
    validate_path,
    validate_reason,
)

#: Longest wait a single long-poll or drain may ask for (seconds).
MAX_WAIT_S = 3600.0
#: Fencing tokens are "<revision>-<nonce>"; a bare revision (a hold from before nonces) too.
TOKEN_PATTERN = r"^[1-9][0-9]{0,18}(-[0-9A-Za-z]{1,64})?$"

_STRICT = ConfigDict(extra="forbid", strict=True)

#: JSON-schema pattern of a valid adapter or holder name, at least as strict as
#: :func:`pausesvc.validate_name` (which the service runs): no whitespace, no control characters.
NAME_PATTERN = r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]{1,256}$"
NAME_SCHEMA: JsonDict = {"pattern": NAME_PATTERN}
REASON_PATTERN = r"^[^\x00-\x08\x0a-\x1f]*$"
_NAME_SCHEMA = NAME_SCHEMA
_REASON_SCHEMA: JsonDict = {"pattern": REASON_PATTERN}


def _token_text(v: object) -> object:
    """A token is a string; a bare integer (a hold from before nonces) is accepted as one."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return v


#: A fencing token, opaque: as ``pause`` returned it (``"57-3f9a1c2b7d4e"``).
Token = Annotated[str, Field(pattern=TOKEN_PATTERN, max_length=84), BeforeValidator(_token_text)]


def _holder(v: str | None) -> str | None:
    return None if v is None else validate_holder(v)


# -- request bodies --------------------------------------------------------------------------------
class PauseRequest(BaseModel):
    """Body of ``POST /v1/pauses/{name}``. Every field is optional; ``{}`` or no body is fine."""

    model_config = _STRICT | ConfigDict(
        # timeout_s only with drain=true (refused otherwise), said in the schema too so that a
        # generated client (or schemathesis) knows: timeout_s absent/null, or drain true
        json_schema_extra={
            "anyOf": [
                {"properties": {"timeout_s": {"type": "null"}}},
                {"properties": {"drain": {"const": True}}, "required": ["drain"]},
            ]
        }
    )

    holder: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra=_NAME_SCHEMA,
        description="Who holds this pause (default: the service's default holder). Pausing "
        "again with the same holder is idempotent.",
    )
    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON_LENGTH,
        json_schema_extra=_REASON_SCHEMA,
        description="Free text shown in status and on the dashboard (no control characters except tab).",
    )
    ttl_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL_S,
        allow_inf_nan=False,
        description="Lease in seconds: the hold disappears unless renewed. Null: no lease.",
    )
    drain: bool = Field(
        default=False,
        description="Answer only once every live replica process acknowledged that it has no "
        "request of this adapter in flight (504 drain_timeout otherwise; the pause stays).",
    )
    timeout_s: float | None = Field(
        default=None,
        ge=0,
        le=MAX_WAIT_S,
        allow_inf_nan=False,
        description="Drain deadline in seconds (default: PAUSESVC_DRAIN_TIMEOUT_S). Only with "
        "drain=true (refused without it: a pause without drain answers at once).",
    )

    _v_holder = field_validator("holder")(_holder)

    @field_validator("timeout_s")
    @classmethod
    def _timeout_needs_drain(cls, v: float | None, info: ValidationInfo) -> float | None:
        # ``drain`` is declared first, so it is validated by now (absent from info.data if invalid)
        if v is not None and info.data.get("drain", False) is not True:
            raise ValueError(
                "timeout_s bounds the wait for a drain: send drain=true with it, or no timeout_s"
            )
        return v

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        return None if v is None else validate_reason(v)


class RenewRequest(BaseModel):
    """Body of ``POST /v1/pauses/{name}/renew``."""

    model_config = _STRICT

    ttl_s: float = Field(
        gt=0, le=MAX_TTL_S, allow_inf_nan=False, description="New lease length, counted from now."
    )
    holder: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra=_NAME_SCHEMA,
        description="Whose lease (default: the default holder).",
    )
    token: Token | None = Field(default=None, description="Fencing token from the pause; refused if stale.")

    _v_holder = field_validator("holder")(_holder)


_RESERVED: list[JsonValue] = list(sorted(RESERVED_LOAD_KEYS))
_LOAD_SCHEMA: JsonDict = {"propertyNames": {"minLength": 1, "not": {"enum": _RESERVED}}}


class VersionRequest(BaseModel):
    """Body of ``POST /v1/adapters/{name}/version``: swap NAME to a weight version."""

    model_config = _STRICT

    version: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra=_NAME_SCHEMA,
        description="The version label (opaque; the adapter-name rules).",
    )
    path: str = Field(
        min_length=1,
        max_length=MAX_PATH_LENGTH,
        json_schema_extra={"pattern": r"^[^\x00-\x1f\x7f]+$"},
        description="Where the weights are (load_lora_adapter's lora_path).",
    )
    load: dict[str, str | int | float | bool | None] | None = Field(
        default=None,
        max_length=MAX_LOAD_FIELDS,
        json_schema_extra=_LOAD_SCHEMA,
        description="Extra load_lora_adapter fields (scalars; not lora_name / lora_path).",
    )
    barrier: bool = Field(
        default=True,
        description="Pause with drain, set the version, wait until every live replica loaded it, "
        "resume (504 swap_timeout / 409 swap_failed otherwise). False: set it and answer at once.",
    )
    timeout_s: float | None = Field(
        default=None,
        ge=0,
        le=MAX_WAIT_S,
        allow_inf_nan=False,
        validation_alias=AliasChoices("timeout_s", "timeout"),
        description="Barrier deadline in seconds (default PAUSESVC_DRAIN_TIMEOUT_S); `timeout` "
        "is accepted too.",
    )
    holder: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra=_NAME_SCHEMA,
        description="Holder of the swap's pause (default: '<default holder>/swap').",
    )
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH, json_schema_extra=_REASON_SCHEMA)

    _v_holder = field_validator("holder")(_holder)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        return validate_version(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return validate_path(v)

    @field_validator("load")
    @classmethod
    def _load(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else validate_load(v)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str | None) -> str | None:
        return None if v is None else validate_reason(v)


class SkyRLLoraRequest(BaseModel):
    """Body of ``/skyrl/v1/resume_lora_requests``."""

    model_config = _STRICT

    lora_name: str = Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra=_NAME_SCHEMA,
        description="The LoRA adapter's name as vLLM serves it.",
    )
    holder: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra=_NAME_SCHEMA,
        description="Hold to release (default: `skyrl`).",
    )

    @field_validator("lora_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, field="lora_name")

    _v_holder = field_validator("holder")(_holder)


class SkyRLAbortRequest(SkyRLLoraRequest):
    """Body of ``/skyrl/v1/abort_lora_requests``."""

    timeout_s: float | None = Field(
        default=None,
        ge=0,
        le=MAX_WAIT_S,
        allow_inf_nan=False,
        description="Drain deadline in seconds (default: PAUSESVC_DRAIN_TIMEOUT_S); a numeric "
        'string ("0.3") is accepted, as SkyRL\'s server did.',
    )

    _seconds = field_validator("timeout_s", mode="before")(number_from_text)


class SkyRLWaitRequest(BaseModel):
    """Body of ``/skyrl/v1/wait_lora_unpaused``."""

    model_config = _STRICT

    lora_name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, json_schema_extra=_NAME_SCHEMA)
    timeout_s: float = Field(
        default=60.0,
        ge=0,
        le=MAX_WAIT_S,
        allow_inf_nan=False,
        description="Give up (and answer paused=true) after this long; a "
        'numeric string ("0.3") is accepted, as SkyRL\'s server did.',
    )

    _seconds = field_validator("timeout_s", mode="before")(number_from_text)

    @field_validator("lora_name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, field="lora_name")


# -- responses -------------------------------------------------------------------------------------
class HoldOut(BaseModel):
    holder: str
    token: str = Field(description="Fencing token of this hold (opaque: '<revision>-<nonce>').")
    since: float = Field(description="Unix time (Redis clock) the hold was taken.")
    reason: str | None = None
    expires_at: float | None = Field(default=None, description="Lease end (unix time) or null.")


class AdapterStateOut(BaseModel):
    name: str
    paused: bool
    since: float
    revision: int = Field(description="Revision of the last change of this adapter.")
    pause_revision: int = Field(description="Revision that paused it (first hold).")
    token: str = Field(description="The newest hold's fencing token.")
    reason: str | None = None
    expires_at: float | None = Field(
        default=None, description="When the pause ends by itself (every hold is a lease)."
    )
    holders: dict[str, HoldOut]


class DesiredVersionOut(BaseModel):
    name: str
    version: str
    path: str
    load: dict[str, Any]
    revision: int = Field(description="The revision that set it.")
    at: float = Field(description="When it was set (unix time, Redis clock).")


class SnapshotOut(BaseModel):
    revision: int
    epoch: str | None = None
    server_time: float
    paused: dict[str, AdapterStateOut]
    versions: dict[str, DesiredVersionOut] = Field(
        default_factory=dict, description="adapter -> desired weight version."
    )
    orphaned: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Adapters Redis lost without a resume that processes still hold paused "
        "(orphans): adapter -> who holds it ('service' for this service's own view, else the "
        "live replica ids). Release with DELETE ...?force=true once the swap is done.",
    )


class SwapOut(BaseModel):
    name: str
    version: str
    revision: int = Field(description="The revision that set the desired version.")
    loaded: list[str] = Field(description="Live replicas that reported it loaded (barrier only).")
    seconds: float


class ReplicaVersionOut(BaseModel):
    id: str
    url: str | None = None
    loaded: dict[str, Any] | None = Field(
        default=None,
        description="Its last report: {replica, name, version, status (loaded, loading, "
        "failed), reason, attempts, rev, at}; null if it reported none.",
    )
    on_desired: bool = Field(description="It reported the desired version loaded.")


class AdapterVersionOut(BaseModel):
    name: str
    desired: DesiredVersionOut | None = None
    replicas: list[ReplicaVersionOut] = Field(description="Every live replica.")
    mixed: bool = Field(description="The live replicas do not all serve the same version.")


class ClearVersionOut(BaseModel):
    name: str
    cleared: bool = Field(description="It had a desired version.")


class AdapterStatusOut(BaseModel):
    name: str
    paused: bool = Field(description="This adapter itself is held paused.")
    paused_by_global: bool = Field(description="`*` is paused (which pauses every adapter).")
    revision: int
    state: AdapterStateOut | None = None
    orphaned: list[str] = Field(
        default_factory=list,
        description="Redis lost this adapter's pause without a resume and these still hold it "
        "paused (an orphan: 'service' and live replica ids); empty: none.",
    )


class DrainOut(BaseModel):
    replicas: list[str] = Field(description="Live replica processes that acknowledged.")
    aborted: list[str] = Field(description="Request ids the replicas aborted for this pause.")
    count: int


class GrantOut(BaseModel):
    name: str
    holder: str
    token: str = Field(description="Fencing token: present it to resume and renew (opaque).")
    revision: int
    created: bool = Field(description="False when this holder already held the pause.")
    state: AdapterStateOut
    drain: DrainOut | None = Field(default=None, description="Present when drain=true.")


class ResumeOut(BaseModel):
    name: str
    holder: str
    released: bool = Field(description="A hold was released by this call.")
    paused: bool = Field(description="Other holders keep the adapter paused.")
    revision: int
    state: AdapterStateOut | None = None


class WaitOut(BaseModel):
    paused: bool = Field(
        description="False: not paused (returned as soon as that was true). "
        "True: still paused when timeout_s expired."
    )
    revision: int
    waited_s: float


class ReplicaOut(BaseModel):
    """A replica process's registry record; fields beyond these are whatever it publishes."""

    model_config = ConfigDict(extra="allow")

    id: str
    live: bool
    heartbeat_age_s: float
    drains: dict[str, Any] = Field(
        description="adapter -> last drain acknowledgement ({replica, name, rev, aborted, ts})."
    )


class ReplicasOut(BaseModel):
    replicas: list[ReplicaOut]
    live: int


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    redis: bool
    in_sync: bool
    revision: int
    staleness_s: float
    last_error: str | None = None


class SkyRLAbortOut(BaseModel):
    status: Literal["ok"]
    aborted: list[str]
    count: int
    token: str = Field(description="Fencing token of the `skyrl` hold (extension).")


class SkyRLResumeOut(BaseModel):
    status: Literal["ok"]
    released: bool = Field(description="A hold was released by this call (extension).")
    paused: bool = Field(description="Other holders keep it paused (extension).")


class SkyRLWaitOut(BaseModel):
    paused: bool


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every error the service answers has this shape."""

    detail: str = Field(description="What went wrong, in one sentence.")
    error: str = Field(
        description="Machine-readable code: invalid_input, unauthorized, "
        "forbidden, not_found, method_not_allowed, not_holder, stale_token, "
        "drain_timeout, swap_timeout, swap_failed, redis_unavailable, internal."
    )
    field: str | None = Field(default=None, description="The offending input, when one is.")
    errors: list[ErrorItem] | None = Field(default=None, description="Every validation issue.")
    holders: list[str] | None = Field(default=None, description="not_holder: who holds it.")
    presented: str | None = Field(default=None, description="stale_token: the token sent.")
    current: str | None = Field(default=None, description="stale_token: the hold's token.")
    token: str | None = Field(
        default=None, description="drain_timeout: the pause's token (the pause IS in place)."
    )
    missing: list[str] | dict[str, str] | None = Field(
        default=None,
        description="drain_timeout: replicas that did not ack; swap_timeout: replica id -> url "
        "of each live replica that did not report the version loaded.",
    )
    failed: dict[str, str] | None = Field(
        default=None, description="swap_failed / swap_timeout: replica id -> why its load failed."
    )
    loaded: list[str] | None = Field(default=None, description="swap: replicas that loaded it.")
    version: str | None = Field(default=None, description="swap: the version (it IS set).")
    revision: int | None = Field(default=None, description="swap: the revision that set it.")
