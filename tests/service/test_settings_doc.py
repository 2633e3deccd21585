"""docs/settings.md lists every field of pausesvc.Settings, generated from the model.

Regenerate after changing Settings:  python -m tests.service.test_settings_doc
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal, get_args, get_origin

from pausesvc import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
BEGIN, END = "<!-- BEGIN GENERATED: settings table -->", "<!-- END GENERATED -->"


def _default(name: str) -> str:
    field = Settings.model_fields[name]
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    return f"`{json.dumps(value) if isinstance(value, list) else value}`"


#: Meanings for fields the model leaves without a description.
EXTRA = {
    "replication_wait_timeout_ms": "How long that WAIT may take (ms).",
    "reconnect_max_backoff_s": "Longest pause between the watcher's reconnect attempts "
    "(jittered exponential backoff).",
    "heartbeat_interval_s": "Replica processes heartbeat into the registry this often.",
    "drain_timeout_s": "Default deadline of a drained pause (POST /v1/pauses/{name} with "
    "drain, /skyrl/v1/abort_lora_requests); 504 drain_timeout after it.",
    "gate_policy": "Gate: hold paused requests until resume, or reject them with 503 at once.",
    "gate_hold_timeout_s": "Gate: longest hold; then the gate_deadline_response. Must exceed "
    "the longest pause a weight sync makes (abort on every replica, "
    "load, resume; see skyrl.md, Deadlines), or held requests are "
    "answered before the new weights are in.",
    "gate_retry_after_s": "Gate: Retry-After on its 503s.",
    "gate_max_body_bytes": "Gate: body cap on gated paths (413 over it).",
    "host": "Control service: interface to listen on (`pausesvc serve --host`).",
    "port": "Control service: TCP port (`pausesvc serve --port`; 0 = any free port).",
    "log_level": "Control service log level (JSON lines on stderr).",
}


def _type(name: str) -> str:
    ann = Settings.model_fields[name].annotation
    if get_origin(ann) is Literal:
        return " or ".join(f"`{a}`" for a in get_args(ann))
    text = getattr(ann, "__name__", None) or str(ann)
    text = text.replace("typing.", "").replace("NoneType", "None")
    return text.replace("|", "\\|")


def render() -> str:
    rows = ["| Setting | Environment variable | Type | Default | Meaning |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        desc = (field.description or EXTRA.get(name, "")).replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | `PAUSESVC_{name.upper()}` | {_type(name)} | {_default(name)} | {desc} |")
    return "\n".join(rows)


def test_doc_lists_every_setting_with_env_var_and_default() -> None:
    text = DOC.read_text()
    for name in Settings.model_fields:
        assert re.search(rf"\| `{name}` \| `PAUSESVC_{name.upper()}` \|", text), name
        assert Settings.model_fields[name].description or EXTRA.get(name), f"{name}: no meaning"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == render(), "docs/settings.md is stale: python -m tests.service.test_settings_doc"


if __name__ == "__main__":
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    DOC.write_text(f"{head}{BEGIN}\n{render()}\n{END}{tail}")
    print(f"wrote {DOC}")
