"""Which adapter a request may run on, read from every place vLLM 0.32 reads it.

- the body's top-level ``"model"``: a JSON object (any content type), or the ``model`` field of a
  ``multipart/form-data`` or ``application/x-www-form-urlencoded`` body (``/v1/audio/*``);
- the SageMaker header ``X-Amzn-SageMaker-Adapter-Identifier``: on ``/invocations`` vLLM writes
  its FIRST value into ``body["model"]`` (replacing what was there, ``null`` - the base model -
  when the header is absent or empty). The gate does not rely on that precedence: a request
  with the header may run on any of the header's values OR the body's model, and one to
  ``/invocations`` without it on the base model OR the body's model; it is held while any of
  them is paused (and drained by a pause of any);
- no model (absent, ``null``, ``""``, or an empty body) is the base model, and so is every name of
  the base model (:class:`BaseNames`: vLLM's ``--served-model-name`` values and the model path,
  plus ``base_model_names``): a pause of any of them holds and drains all of them. With
  ``VLLM_SKIP_MODEL_NAME_VALIDATION`` set, vLLM runs a request naming any model that is not a
  LoRA on the base model: every request may then be a base-model request. A base-model request
  may also run on a default multimodal LoRA (``--default-mm-loras``): those are among its names.

A body the gate cannot read a model from (not JSON, a JSON value that is not an object, a
``model`` that is not a string, a form without a boundary, a form with two different ``model``
fields - the gate cannot know which one the app reads) *could be for any adapter*: it is held
while anything at all is paused, and every drain waits for it (fail closed). vLLM answers most of
them 400 anyway.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Iterable
from typing import Any
from urllib.parse import parse_qs

from pausesvc import GLOBAL, InvalidInputError, validate_name

__all__ = [
    "SAGEMAKER_ADAPTER_HEADER",
    "SAGEMAKER_INVOCATIONS_PATH",
    "BaseNames",
    "Target",
    "body_model",
    "is_stepwise",
]

#: vLLM 0.32's ``/invocations`` (model_hosting_container_standards ``inject_adapter_id``).
SAGEMAKER_ADAPTER_HEADER = b"x-amzn-sagemaker-adapter-identifier"
#: the one route vLLM applies that header on (normalized path)
SAGEMAKER_INVOCATIONS_PATH = "/invocations"

_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?', re.IGNORECASE)
_FORM_MODEL = re.compile(rb'(?:^|;)\s*name="?model"?\s*(?:;|$)', re.IGNORECASE)
#: JSON escapes that can stand for a character of a valid name (see ``Target.may_name``)
_NAME_ESCAPES = (b"\\u", b"\\/", b'\\"', b"\\\\")


def _valid(name: str) -> bool:
    try:
        validate_name(name)
    except InvalidInputError:
        return False
    return True


def _plain(name: str) -> bool:
    """No whitespace or unprintable character (which a JSON escape such as ``\\n`` stands for)."""
    return name.isprintable() and len(name.split()) == 1 and name.split()[0] == name


class BaseNames:
    """Every name of the base model. They are one name for the gate: a request naming none of
    them (or no model) is a base-model request, and a pause of any of them pauses all.

    Learned from the vLLM app at start (``app.state.openai_serving_models.base_model_paths``:
    each served name and the model path; else ``app.state.args``), plus ``configured``
    (``PAUSESVC_BASE_MODEL_NAMES``, which also works without vLLM).
    """

    __slots__ = ("any_name", "canonical", "learned", "mm_loras", "names")

    def __init__(self, configured: Iterable[str] = (), *, any_name: bool | None = None) -> None:
        self.names: frozenset[str] = frozenset()
        self.canonical = ""
        self.learned = False
        #: vLLM runs a request naming any non-LoRA model on the base model
        #: (``VLLM_SKIP_MODEL_NAME_VALIDATION``, read from this process's environment as vLLM does)
        self.any_name = _skip_validation() if any_name is None else any_name
        #: LoRAs vLLM may put a base-model request on by its content (``--default-mm-loras``)
        self.mm_loras: tuple[str, ...] = ()
        self._add(list(configured))

    def _add(self, names: list[str]) -> None:
        names = [n for n in names if isinstance(n, str) and n and _valid(n)]
        if names and not self.canonical:
            self.canonical = names[0]
        self.names = self.names | frozenset(names)

    def learn(self, app: Any) -> bool:
        """Read the served names from a vLLM app; True once they are known (then cached)."""
        if self.learned:
            return True
        state = getattr(app, "state", None)
        found: list[Any] = []
        models = getattr(state, "openai_serving_models", None) if state is not None else None
        for path in getattr(models, "base_model_paths", None) or ():
            found += [getattr(path, "name", None), getattr(path, "model_path", None)]
        args = getattr(state, "args", None) if state is not None else None
        if args is not None:
            served = getattr(args, "served_model_name", None)
            found += list(served) if isinstance(served, list | tuple) else [served]
            found.append(getattr(args, "model", None))
            mm = getattr(args, "default_mm_loras", None)
            if isinstance(mm, dict):
                self.mm_loras = tuple(sorted(n for n in mm if isinstance(n, str) and _valid(n)))
        names = [n for n in found if isinstance(n, str) and n]
        if not names:
            return False
        canonical = self.canonical
        self.canonical = ""
        self._add(names)  # the first served name becomes the canonical one
        if not self.canonical:
            self.canonical = canonical
        self.learned = True
        return True

    def is_base(self, name: str) -> bool:
        return not name or name in self.names

    def canonical_of(self, name: str) -> str:
        return self.canonical if self.is_base(name) else name

    def check(self) -> list[str]:
        """The pause names that hold a base-model request (``*`` is checked by each)."""
        return sorted(self.names) or [GLOBAL]


def _skip_validation() -> bool:
    """vLLM's ``VLLM_SKIP_MODEL_NAME_VALIDATION`` (its own parsing: ``1`` or ``true``)."""
    return os.environ.get("VLLM_SKIP_MODEL_NAME_VALIDATION", "0").strip().lower() in ("1", "true")


def _one(values: list[str]) -> str | None:
    """The value of a form field given ``values`` times; None (cannot tell) when they differ:
    Starlette reads the last, other parsers the first."""
    if not values:
        return ""
    return values[0] if len(set(values)) == 1 else None


def body_model(body: bytes, content_type: bytes | None = None) -> str | None:
    """The model a body names: a name, ``""`` for none (the base model), None when it cannot
    be told (not JSON, not an object, a non-string model, a malformed form)."""
    ctype = (content_type or b"").split(b";", 1)[0].strip().lower()
    if ctype == b"multipart/form-data":
        return _multipart_model(body, content_type or b"")
    if ctype == b"application/x-www-form-urlencoded":
        try:
            values = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return None
        return _one(values.get("model", []))
    if not body.strip():
        return ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    model = data.get("model")
    if model is None:
        return ""
    return model if isinstance(model, str) else None


def _multipart_model(body: bytes, content_type: bytes) -> str | None:
    m = _BOUNDARY.search(content_type)
    if m is None:
        return None
    delimiter = b"--" + m.group(1)
    if delimiter not in body:
        return None
    found: list[str] = []
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        for line in head.split(b"\r\n"):
            name, _, rest = line.partition(b":")
            if name.strip().lower() == b"content-disposition" and _FORM_MODEL.search(rest):
                if value.endswith(b"\r\n"):
                    value = value[:-2]
                try:
                    found.append(value.decode("utf-8").strip())
                except UnicodeDecodeError:
                    return None
                break
    return _one(found)


_FALSE = frozenset({"false", "0", "no", "off", "f", "n", ""})


def is_stepwise(body: bytes) -> bool:
    """May this body ask for beam search (``use_beam_search``)? vLLM's serving layer runs a
    beam search as one engine request PER STEP, so aborting the engine's requests does not end
    it: the next step starts a new one. A drain has to end the whole request (see
    :func:`pausesvc_vllm._asgi.cuttable_receive`). Told without parsing when the field's
    name cannot be in the body (no escape, not UTF-16/32); parsed otherwise. A value pydantic
    might read as true - anything but false, 0, null or a false-like string - counts."""
    # (bytes.find: cheaper per call than ``in``; a body that does not open with "{" -
    # whitespace, UTF-16/32, not JSON - is parsed)
    if body.find(b"_beam_search") < 0 and body.find(b"\\") < 0 and body[:1] == b"{":
        return False
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False  # vLLM answers 400: nothing runs
    if not isinstance(data, dict) or "use_beam_search" not in data:
        return False
    value = data["use_beam_search"]
    if isinstance(value, str):
        return value.strip().lower() not in _FALSE
    return value not in (None, False, 0)


class Target:
    """The adapter(s) one request may run on: ``names`` (``""`` is the base model), or None
    when it cannot be told. Parsed from the body on first use when ``lazy`` (the gate's fast
    path, when nothing is paused: only a drain or a status asks)."""

    __slots__ = ("_body", "_ctype", "_names", "_parsed", "base", "header", "invocations")

    def __init__(
        self,
        base: BaseNames,
        *,
        body: bytes | None = None,
        content_type: bytes | None = None,
        header: str | Collection[str] | None = None,
        invocations: bool = False,
        names: tuple[str, ...] | None = None,
        lazy: bool = False,
    ) -> None:
        self.base = base
        #: the adapter header's (non-empty) values, in order; None: none
        self.header: tuple[str, ...] | None = None
        if header is not None:  # (the usual request has none: nothing to build)
            values = (header,) if isinstance(header, str) else header
            self.header = tuple(dict.fromkeys(v for v in values if v)) or None
        #: SageMaker's ``/invocations``: with no adapter header vLLM runs it on the base model
        self.invocations = invocations
        self._body = body
        self._ctype = content_type
        self._names = names
        self._parsed = body is None
        if not lazy and body is not None:
            self._parse()
        elif names is not None:
            self._names = self._widen(list(names))

    def _parse(self) -> None:
        body, self._body, self._parsed = self._body, None, True
        model = body_model(body, self._ctype) if body is not None else ""
        if model is None:
            self._names = None
            return
        names = list(self.header or ())
        if self.invocations and not names:
            names.append("")  # vLLM replaces the body's model with null: the base model
        if model not in names:
            names.append(model)
        self._names = self._widen(names)

    def _widen(self, names: list[str]) -> tuple[str, ...]:
        """``names`` plus where vLLM may run such a request besides: the base model for any
        name under ``VLLM_SKIP_MODEL_NAME_VALIDATION``, a default multimodal LoRA for a
        base-model request."""
        base = self.base
        if base.any_name and not any(base.is_base(n) for n in names):
            names.append("")
        if base.mm_loras and any(base.is_base(n) for n in names):
            names += [n for n in base.mm_loras if n not in names]
        return tuple(names)

    @property
    def names(self) -> tuple[str, ...] | None:
        if not self._parsed:
            self._parse()
        return self._names

    @property
    def display(self) -> str | None:
        """The name to count it under: the first name (the base model by its canonical name),
        None when it cannot be told."""
        names = self.names
        return None if names is None else self.base.canonical_of(names[0])

    def may_name(self, names: Collection[str]) -> bool:
        """Could :attr:`display` be one of ``names`` (valid adapter names)? False only when it
        surely is not, told from the raw body without parsing it (a lazy target stays lazy).

        A JSON string equal to such a name is its UTF-8 bytes, or holds one of the escapes
        ``\\u``, ``\\/``, ``\\"``, ``\\\\`` (the others decode to whitespace or control
        characters: names with those are parsed); a multipart value is the raw bytes. Anything
        else - a form-urlencoded or UTF-16/32 body, the adapter header, a base-model name
        among ``names`` (a body naming no model counts as the base model) - is parsed.
        """
        if self._parsed or self.header is not None or self.invocations:
            return True
        body = self._body
        assert body is not None
        if body[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in body[:4]:
            return True
        ctype = self._ctype
        if ctype is not None and b"urlencoded" in ctype.lower():
            return True
        if b"\\" in body and (any(e in body for e in _NAME_ESCAPES) or not all(_plain(n) for n in names)):
            return True
        base = self.base
        return any(base.is_base(n) or n.encode() in body for n in names)

    def matches(self, name: str) -> bool:
        """Is this request of ``name`` (a paused name: an adapter, a base-model name or ``*``)?"""
        names = self.names
        if name == GLOBAL or names is None:
            return True
        base = self.base
        return any(n == name or (base.is_base(n) and base.is_base(name)) for n in names)

    def check(self) -> list[str] | None:
        """The pause names to check before admitting it; None: anything paused holds it."""
        names = self.names
        if names is None:
            return None
        out: list[str] = []
        for n in names:
            if self.base.is_base(n):
                out += self.base.check()
            else:
                out.append(n if _valid(n) else GLOBAL)
        return out
