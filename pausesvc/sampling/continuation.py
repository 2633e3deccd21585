"""The pure half of :mod:`pausesvc.sampling`: request checks, resubmission bodies, accumulation.

No I/O happens here (the httpx ``BaseClient`` pattern): the async and the sync loops in
:mod:`pausesvc.sampling` drive one :class:`CompletionState` or :class:`ChatState` each, so
both loops resume a sample in exactly the same way.

Errors (the sampling part of the pausesvc tree)::

    PauseError
    ├── InvalidInputError (also a ValueError)   the request cannot be sampled with retries
    └── SampleError                             .partial: the tokens accumulated so far
        ├── UnresumableAbortError               an abort that cannot be continued faithfully
        ├── SampleRetryError                    too many zero-progress aborts / failures in a row
        ├── SampleTimeoutError (a TimeoutError) the overall deadline passed
        ├── MixedVersionsError                  one set of weights was required, the spans have several
        └── SampleResponseError                 the server's answer is unusable (4xx, malformed)
            └── MissingLogprobError             a requested logprob is missing (never a zero)

Versions: the gate names the adapter's loaded weights in the ``x-pausesvc-adapter-version``
header of every response (absent when the replica does not know them). Each attempt's tokens
are recorded with that label, and :attr:`SampleResult.versions` lists them as contiguous
:class:`VersionSpan` runs.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pausesvc._exceptions import InvalidInputError, PauseError, PauseTimeoutError

__all__ = [
    "ADAPTER_VERSION_HEADER",
    "Boundary",
    "ChatState",
    "CompletionState",
    "MissingLogprobError",
    "MixedVersionsError",
    "RetryPolicy",
    "SampleError",
    "SampleResponseError",
    "SampleResult",
    "SampleRetryError",
    "SampleTimeoutError",
    "UnresumableAbortError",
    "VersionSpan",
    "derive_seed",
    "version_of",
]

Kind = Literal["completion", "chat"]
ResumeReason = Literal["abort", "transport", "status"]

#: The response header in which the gate names the adapter's loaded version (HTTP headers are
#: case-insensitive; the gate sends it lower-case, at ``http.response.start``).
ADAPTER_VERSION_HEADER = "x-pausesvc-adapter-version"


def version_of(headers: Mapping[str, str]) -> str | None:
    """The adapter version a response names (None when the header is absent or empty).

    A response naming more than one (the header repeated - httpx joins the values with ", " -
    by something between the replica and us) cannot say which weights made its tokens:
    :class:`SampleResponseError`, never one span labelled with both."""
    get_list = getattr(headers, "get_list", None)
    values = get_list(ADAPTER_VERSION_HEADER) if callable(get_list) else [headers.get(ADAPTER_VERSION_HEADER)]
    found = sorted({v.strip() for v in values if isinstance(v, str) and v.strip()})
    if len(found) > 1:
        raise SampleResponseError(f"the response names {len(found)} adapter versions ({', '.join(found)})")
    return found[0] if found else None


# -- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Boundary:
    """Where a sample was resumed: tokens ``[index:]`` came from a later request.

    ``pause_revision`` is the revision of the newest pause of the adapter the waiter knew of when
    the continuation was sent (the weights the continuation ran on were installed under it);
    None when the waiter never saw the adapter paused (a short pause, or an abort that had
    another cause). ``revision`` is the namespace revision the waiter had seen (None if unknown).
    """

    index: int
    pause_revision: int | None
    revision: int | None
    reason: ResumeReason
    attempt: int
    seed: int | None = None
    waited_s: float = 0.0


@dataclass(frozen=True, slots=True)
class VersionSpan:
    """Tokens ``[start, end)`` of a sample were produced by the adapter version ``version``.

    ``version`` is the label the gate sent with the response of the attempt that produced them
    (None: the response named no version - a gate without versions, or a replica that did not
    know which weights it had loaded).
    """

    start: int
    end: int
    version: str | None

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class SampleResult:
    """One sample, accumulated over every attempt.

    ``response`` is the server's JSON when one call sufficed (unchanged), else the last response
    with its first choice replaced by the merged one (text, token ids, logprobs, usage).
    ``finish_reason`` is never ``"abort"`` in a returned result; it is in an error's ``partial``.
    ``versions`` tile ``tokens`` from 0 to ``len(tokens)`` in order, one span per run of
    attempts that answered with the same version (none for an empty sample).
    """

    kind: Kind
    tokens: list[int]
    text: str
    finish_reason: str
    stop_reason: int | str | None
    logprobs: list[float] | None
    top_logprobs: list[Any] | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list[Any] | None
    boundaries: tuple[Boundary, ...]
    attempts: int
    response: dict[str, Any] = field(repr=False)
    versions: tuple[VersionSpan, ...] = ()

    @property
    def resumed(self) -> bool:
        return bool(self.boundaries)

    @property
    def complete(self) -> bool:
        return self.finish_reason != "abort"


# -- errors ----------------------------------------------------------------------------------------
class SampleError(PauseError):
    """A sample could not be completed. ``partial`` holds what was accumulated (maybe nothing)."""

    def __init__(self, message: str, *, partial: SampleResult | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class UnresumableAbortError(SampleError):
    """The server aborted the sample and it cannot be continued without corrupting it."""


class SampleRetryError(SampleError):
    """Gave up after too many consecutive zero-progress aborts, transport errors or 5xx."""


class SampleTimeoutError(SampleError, PauseTimeoutError):
    """The overall deadline of the sample passed."""


class MixedVersionsError(SampleError):
    """A sample had to come from one set of weights, but its version spans name several.

    ``partial`` is the whole sample (its ``versions`` say where the weights changed).
    """


class SampleResponseError(SampleError):
    """The server's answer cannot be used (a non-retryable status, a malformed body)."""

    def __init__(
        self, message: str, *, partial: SampleResult | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message, partial=partial)
        self.status_code = status_code


class MissingLogprobError(SampleResponseError):
    """Logprobs were requested but the server left one out (it is never replaced by a zero)."""


# -- policy ----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try. Counts are *consecutive*: any progress resets them.

    ``backoff_s``/``max_backoff_s``: jittered exponential delay before resubmitting after a
    zero-progress abort that no pause explains, or after a transport error / retryable status.
    A resume after a pause the waiter saw is sent at once.
    """

    max_zero_progress_aborts: int = 8
    max_failures: int = 5
    backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    retry_statuses: frozenset[int] = frozenset({408, 425, 429, 500, 502, 503, 504})

    def __post_init__(self) -> None:
        for name in ("max_zero_progress_aborts", "max_failures"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidInputError(f"{name} must be an integer >= 0", field=name)
        if not (0 <= self.backoff_s <= self.max_backoff_s):
            raise InvalidInputError("need 0 <= backoff_s <= max_backoff_s", field="backoff_s")

    def delay(self, streak: int, rand: float) -> float:
        """The delay before the ``streak``-th consecutive retry; ``rand`` in [0, 1)."""
        base = min(self.max_backoff_s, self.backoff_s * 2.0 ** max(0, min(streak - 1, 20)))
        return base * (0.5 + 0.5 * rand)


def derive_seed(seed: int, accumulated: int) -> int:
    """The seed of a continuation that starts after ``accumulated`` tokens (see module docs)."""
    if accumulated == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}:{accumulated}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1  # within vLLM's int64 range


# -- validation helpers ----------------------------------------------------------------------------
def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(request: Mapping[str, Any], name: str) -> int:
    v = request.get(name)
    if v is None:
        raise InvalidInputError(f"{name} is required (a positive integer)", field=name)
    if not _is_int(v) or v <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {v!r}", field=name)
    return int(v)


def _common_checks(request: object) -> dict[str, Any]:
    if not isinstance(request, Mapping):
        raise InvalidInputError("request must be a JSON object (a dict)", field="request")
    body = copy.deepcopy(dict(request))
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise InvalidInputError(f"n must be 1 (sample n times instead), got {n!r}", field="n")
    best_of = body.get("best_of")
    if best_of is not None and (not _is_int(best_of) or best_of != 1):
        raise InvalidInputError(f"best_of must be 1, got {best_of!r}", field="best_of")
    if body.get("stream"):
        raise InvalidInputError("stream is not supported: send a non-streaming request", field="stream")
    if body.get("echo"):
        raise InvalidInputError("echo is not supported: a resubmission would echo the tokens", field="echo")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise InvalidInputError(f"seed must be an integer, got {seed!r}", field="seed")
    min_tokens = body.get("min_tokens")
    if min_tokens is not None and (not _is_int(min_tokens) or min_tokens < 0):
        raise InvalidInputError(f"min_tokens must be an integer >= 0, got {min_tokens!r}", field="min_tokens")
    return body


def _choice(resp: object) -> dict[str, Any]:
    if not isinstance(resp, Mapping):
        raise SampleResponseError("the response is not a JSON object")
    choices = resp.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], Mapping):
        raise SampleResponseError("the response must have exactly one choice")
    return dict(choices[0])


def _token_ids(choice: Mapping[str, Any], aborted: bool, has_output: bool) -> list[int]:
    ids = choice.get("token_ids")
    if ids is None:
        if aborted and not has_output:
            return []  # aborted while queued: nothing was generated
        raise (UnresumableAbortError if aborted else SampleResponseError)(
            "the response has no token_ids (is return_token_ids supported by the server?)"
        )
    if not isinstance(ids, list) or not all(_is_int(t) for t in ids):
        raise SampleResponseError("token_ids must be a list of integers")
    if not ids and has_output:  # text that no token made: the sample's text and ids would differ
        raise (UnresumableAbortError if aborted else SampleResponseError)(
            "the response has text but no token_ids: its text cannot be matched to tokens"
        )
    return list(ids)


def _check_logprobs(values: list[Any], n_tokens: int) -> list[float]:
    if len(values) != n_tokens:
        raise MissingLogprobError(f"{n_tokens} token(s) but {len(values)} logprob(s) in the response")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MissingLogprobError(f"the logprob of generated token {i} is missing ({v!r})")
    return [float(v) for v in values]


# -- the state of one sample -----------------------------------------------------------------------
class _State:
    """What both endpoints share: budgets, accumulation, boundaries, the result."""

    kind: Kind
    max_fields: tuple[str, ...]

    def __init__(self, body: dict[str, Any], adapter: str | None) -> None:
        self.request = body
        name = adapter if adapter is not None else body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidInputError(
                "the adapter name is required: set request['model'] or pass adapter=...", field="model"
            )
        self.adapter = name
        self.max_tokens = self._max_tokens(body)
        self.want_logprobs = self._wants_logprobs(body)
        self.seed: int | None = body.get("seed")
        self.tokens: list[int] = []
        self.logprobs: list[float] | None = [] if self.want_logprobs else None
        self.top_logprobs: list[Any] | None = None
        self.text_parts: list[str] = []
        self.boundaries: list[Boundary] = []
        # (first token index, version) of every answered attempt, in order
        self.segments: list[tuple[int, str | None]] = []
        self.responses: list[dict[str, Any]] = []
        self.prompt_token_ids: list[int] | None = None
        self.prompt_logprobs: list[Any] | None = None
        self.finish_reason = "abort"
        self.stop_reason: int | str | None = None
        self.last_progress = 0
        self.finished_by_server = False

    # budgets -----------------------------------------------------------------------------------
    def _max_tokens(self, body: Mapping[str, Any]) -> int:
        present = [f for f in self.max_fields if body.get(f) is not None]
        if not present:
            raise InvalidInputError(
                f"{self.max_fields[0]} is required (a positive integer)", field=self.max_fields[0]
            )
        return min(_positive_int(body, f) for f in present)

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.tokens)

    def _wants_logprobs(self, body: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def next_body(self) -> dict[str, Any] | None:
        """The body of the next attempt; None when the budget is spent (the result is length)."""
        if not self.responses:
            return dict(self.request)
        if self.remaining <= 0:
            return None
        body = dict(self.request)
        k = len(self.tokens)
        for f in self.max_fields:
            if body.get(f) is not None:
                body[f] = int(body[f]) - k
        if body.get("min_tokens"):
            body["min_tokens"] = max(0, int(body["min_tokens"]) - k)
        if self.seed is not None:
            body["seed"] = derive_seed(self.seed, k)
        self._continue(body)
        return body

    def _continue(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def add_boundary(
        self, *, pause_revision: int | None, revision: int | None, reason: ResumeReason, waited_s: float
    ) -> None:
        k = len(self.tokens)
        self.boundaries.append(
            Boundary(
                index=k,
                pause_revision=pause_revision,
                revision=revision,
                reason=reason,
                attempt=len(self.responses) + 1,
                seed=None if self.seed is None else derive_seed(self.seed, k),
                waited_s=waited_s,
            )
        )

    # accumulation ------------------------------------------------------------------------------
    def absorb(self, resp: object, version: str | None = None) -> bool:
        """Take one 200 response; True when the sample is finished, False on an abort.

        ``version``: the adapter version the response named (see :func:`version_of`); the
        tokens this response adds are recorded under it.
        """
        self.segments.append((len(self.tokens), version))
        try:
            done = self._absorb(resp)
        except SampleError as exc:
            if exc.partial is None:
                exc.partial = self.result()
            raise
        self.responses.append(dict(resp))  # type: ignore[call-overload]
        return done

    def _absorb(self, resp: object) -> bool:
        raise NotImplementedError

    def _accumulate(
        self,
        ids: list[int],
        lps: list[float] | None,
        top: list[Any] | None,
        text: str,
        finish: object,
        stop_reason: object,
    ) -> bool:
        aborted = finish is None or finish == "abort"
        if len(ids) > self.remaining:
            raise SampleResponseError(
                f"the server returned {len(ids)} tokens, more than the {self.remaining} asked for"
            )
        self.tokens.extend(ids)
        if self.logprobs is not None and lps is not None:
            self.logprobs.extend(lps)
        if top is not None:
            self.top_logprobs = (self.top_logprobs or []) + top
        self.text_parts.append(text)
        self.last_progress = len(ids)
        if aborted:
            self.finish_reason = "abort"
            return False
        if not isinstance(finish, str):
            raise SampleResponseError(f"finish_reason must be a string, got {finish!r}")
        self.finish_reason = finish
        self.stop_reason = stop_reason  # type: ignore[assignment]
        self.finished_by_server = True
        return True

    def _prompt_logprobs(self, ids: object, plps: object) -> None:
        """Keep the newest prompt logprobs, cut back to the original prompt."""
        if not isinstance(ids, list):
            return
        if self.prompt_token_ids is None:
            self.prompt_token_ids = list(ids)
        n = len(self.prompt_token_ids)
        if isinstance(plps, list) and ids[:n] == self.prompt_token_ids and len(plps) >= n:
            self.prompt_logprobs = plps[:n]

    # results -----------------------------------------------------------------------------------
    def length_result(self) -> SampleResult:
        """Nothing remains after an abort: the sample ran to its budget."""
        self.finish_reason = "length"
        self.stop_reason = None
        return self.result()

    def versions(self) -> tuple[VersionSpan, ...]:
        """The segments as contiguous spans over the tokens: empty ones dropped, equal
        neighbours merged."""
        spans: list[VersionSpan] = []
        ends = [start for start, _ in self.segments[1:]] + [len(self.tokens)] if self.segments else []
        for (start, version), end in zip(self.segments, ends, strict=True):
            if end <= start:
                continue
            if spans and spans[-1].version == version:
                spans[-1] = VersionSpan(spans[-1].start, end, version)
            else:
                spans.append(VersionSpan(start, end, version))
        return tuple(spans)

    def result(self) -> SampleResult:
        if len(self.responses) == 1 and self.finished_by_server:
            response = self.responses[0]
        else:
            response = self._merged()
        return SampleResult(
            kind=self.kind,
            tokens=list(self.tokens),
            text="".join(self.text_parts),
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
            logprobs=None if self.logprobs is None else list(self.logprobs),
            top_logprobs=None if self.top_logprobs is None else list(self.top_logprobs),
            prompt_token_ids=self.prompt_token_ids,
            prompt_logprobs=self.prompt_logprobs,
            boundaries=tuple(self.boundaries),
            attempts=len(self.responses),
            response=response,
            versions=self.versions(),
        )

    def _merged(self) -> dict[str, Any]:
        base: dict[str, Any] = copy.deepcopy(self.responses[-1]) if self.responses else {"object": self.kind}
        choices = base.get("choices")
        choice: dict[str, Any] = dict(choices[0]) if choices else {"index": 0}
        choice.update(
            finish_reason=self.finish_reason, stop_reason=self.stop_reason, token_ids=list(self.tokens)
        )
        self._merge_choice(choice)
        base["choices"] = [choice]
        n_prompt = len(self.prompt_token_ids or [])
        base["usage"] = {
            "prompt_tokens": n_prompt,
            "completion_tokens": len(self.tokens),
            "total_tokens": n_prompt + len(self.tokens),
        }
        return base

    def _merge_choice(self, choice: dict[str, Any]) -> None:
        raise NotImplementedError


class CompletionState(_State):
    """Token-in/token-out ``/v1/completions``: resubmit ``prompt + tokens``."""

    kind: Kind = "completion"
    max_fields = ("max_tokens",)

    def __init__(self, request: object, adapter: str | None = None) -> None:
        body = _common_checks(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            if not prompt or not all(_is_int(t) and t >= 0 for t in prompt):
                raise InvalidInputError(
                    "prompt must be one non-empty list of token ids (or one string)", field="prompt"
                )
        elif not isinstance(prompt, str):
            raise InvalidInputError("prompt must be a list of token ids or a string", field="prompt")
        lp = body.get("logprobs")
        if lp is not None and (not _is_int(lp) or lp < 0):
            raise InvalidInputError(f"logprobs must be an integer >= 0, got {lp!r}", field="logprobs")
        body["return_token_ids"] = True
        super().__init__(body, adapter)
        self.text_offsets: list[int] = []
        self.token_strs: list[str] = []

    def _wants_logprobs(self, body: Mapping[str, Any]) -> bool:
        return body.get("logprobs") is not None

    def _continue(self, body: dict[str, Any]) -> None:
        if self.prompt_token_ids is None:
            raise UnresumableAbortError(
                "cannot resume: the server never returned the prompt's token ids", partial=self.result()
            )
        body["prompt"] = self.prompt_token_ids + self.tokens

    def _absorb(self, resp: object) -> bool:
        choice = _choice(resp)
        finish = choice.get("finish_reason")
        aborted = finish is None or finish == "abort"
        text = choice.get("text") or ""
        if not isinstance(text, str):
            raise SampleResponseError("choices[0].text must be a string")
        ids = _token_ids(choice, aborted, bool(text))
        prompt = choice.get("prompt_token_ids")
        if prompt is None and isinstance(self.request["prompt"], list):
            prompt = self.request["prompt"] + self.tokens
        if (
            isinstance(prompt, list)
            and self.prompt_token_ids is not None
            and prompt != self.prompt_token_ids + self.tokens
        ):
            raise SampleResponseError("the server saw a different prompt than was sent")
        self._prompt_logprobs(prompt, choice.get("prompt_logprobs"))
        if self.request.get("prompt_logprobs") is not None and self.prompt_logprobs is None and not aborted:
            raise MissingLogprobError("prompt_logprobs were requested but not returned")
        lps = top = None
        if self.want_logprobs:
            block = choice.get("logprobs")
            if block is None and ids:
                raise MissingLogprobError("logprobs were requested but not returned")
            block = block or {}
            lps = _check_logprobs(list(block.get("token_logprobs") or []), len(ids))
            if block.get("top_logprobs") is not None:
                top = list(block["top_logprobs"])
            offset = len("".join(self.text_parts))
            self.text_offsets += [offset + int(o) for o in block.get("text_offset") or []]
            self.token_strs += list(block.get("tokens") or [])
        return self._accumulate(ids, lps, top, text, finish, choice.get("stop_reason"))

    def _merge_choice(self, choice: dict[str, Any]) -> None:
        choice["text"] = "".join(self.text_parts)
        choice["prompt_token_ids"] = self.prompt_token_ids
        if "prompt_logprobs" in choice or self.prompt_logprobs is not None:
            choice["prompt_logprobs"] = self.prompt_logprobs
        if self.logprobs is not None:
            choice["logprobs"] = {
                "text_offset": self.text_offsets,
                "token_logprobs": list(self.logprobs),
                "tokens": self.token_strs,
                "top_logprobs": self.top_logprobs,
            }


class ChatState(_State):
    """``/v1/chat/completions``: continue the partial assistant message.

    The continuation is sent as text (chat has no token-id prompt), so the server re-tokenizes
    the partial message: the tokens of a resumed chat sample are exact only when that
    re-tokenization round-trips (it does for most byte-level BPE text; see docs/sampling.md).
    """

    kind: Kind = "chat"
    max_fields = ("max_completion_tokens", "max_tokens")

    def __init__(self, request: object, adapter: str | None = None) -> None:
        body = _common_checks(request)
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, Mapping) for m in msgs):
            raise InvalidInputError("messages must be a non-empty list of objects", field="messages")
        top = body.get("top_logprobs")
        if top is not None and (not _is_int(top) or top < 0):
            raise InvalidInputError(
                f"top_logprobs must be an integer >= 0, got {top!r}", field="top_logprobs"
            )
        body["return_token_ids"] = True
        super().__init__(body, adapter)
        self.prefill = bool(body.get("continue_final_message")) and msgs[-1].get("role") == "assistant"
        self.role = "assistant"

    def _wants_logprobs(self, body: Mapping[str, Any]) -> bool:
        return bool(body.get("logprobs"))

    def _continue(self, body: dict[str, Any]) -> None:
        partial = "".join(self.text_parts)
        if partial.endswith("\ufffd"):
            raise UnresumableAbortError(
                "cannot resume: the partial message ends inside a character", partial=self.result()
            )
        msgs = [dict(m) for m in self.request["messages"]]
        if self.prefill:
            msgs[-1]["content"] = str(msgs[-1].get("content") or "") + partial
        else:
            msgs.append({"role": self.role, "content": partial})
        body["messages"] = msgs
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False

    def _absorb(self, resp: object) -> bool:
        choice = _choice(resp)
        finish = choice.get("finish_reason")
        aborted = finish is None or finish == "abort"
        msg = choice.get("message") or {}
        if not isinstance(msg, Mapping):
            raise SampleResponseError("choices[0].message must be an object")
        text = msg.get("content") or ""
        if not isinstance(text, str):
            raise SampleResponseError("choices[0].message.content must be a string")
        if aborted and (msg.get("tool_calls") or msg.get("reasoning_content") or msg.get("reasoning")):
            raise UnresumableAbortError(
                "cannot resume a partial message with tool calls or reasoning (the server parsed it)"
            )
        self.role = str(msg.get("role") or "assistant")
        ids = _token_ids(choice, aborted, bool(text))
        assert isinstance(resp, Mapping)
        # the first prompt that comes back is the original; continuations extend it
        self._prompt_logprobs(resp.get("prompt_token_ids"), resp.get("prompt_logprobs"))
        lps = top = None
        if self.want_logprobs:
            content = (choice.get("logprobs") or {}).get("content")
            if content is None and ids:
                raise MissingLogprobError("logprobs were requested but not returned")
            content = list(content or [])
            lps = _check_logprobs(
                [c.get("logprob") if isinstance(c, Mapping) else None for c in content], len(ids)
            )
            top = content
        return self._accumulate(ids, lps, top, text, finish, choice.get("stop_reason"))

    def _merge_choice(self, choice: dict[str, Any]) -> None:
        msg = dict(choice.get("message") or {"role": self.role})
        msg["content"] = "".join(self.text_parts)
        choice["message"] = msg
        if self.logprobs is not None:
            choice["logprobs"] = {"content": list(self.top_logprobs or [])}

    def _merged(self) -> dict[str, Any]:
        base = super()._merged()
        base["prompt_token_ids"] = self.prompt_token_ids
        if self.prompt_logprobs is not None or "prompt_logprobs" in base:
            base["prompt_logprobs"] = self.prompt_logprobs
        return base
