"""Examples in the README and docs are executed, against the test session's Redis."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_example_runs(redis_url: str, namespace: str, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PAUSESVC_NAMESPACE", namespace)
    (block,) = _python_blocks(ROOT / "README.md")
    assert len(block.strip().splitlines()) <= 12
    scope: dict[str, object] = {}
    exec(compile(block, "README.md", "exec"), scope)
    import asyncio

    asyncio.run(scope["main"](redis_url))  # type: ignore[operator]
    out = capsys.readouterr().out
    assert "paused with token" in out and "resumed: True" in out


def test_readme_quick_start_commands_exist() -> None:
    text = (ROOT / "README.md").read_text()
    assert "bash scripts/setup.sh && .venv/bin/pausesvc serve" in text
    assert ".venv/bin/python -m pytest" in text
    assert ".venv/bin/python -m pytest" in (ROOT / ".ci" / "run").read_text()
    assert (ROOT / "scripts" / "setup.sh").exists()


def test_protocol_doc_names_every_key_and_script() -> None:
    from pausesvc import Keys
    from pausesvc.protocol.scripts import REGISTRY_SCRIPTS, STATE_SCRIPTS

    doc = (ROOT / "docs" / "protocol.md").read_text()
    k = Keys("default")
    keys = (k.rev, k.epoch, k.paused, k.leases, k.tombstones, k.events, k.replicas, k.acks)
    for key in (*keys, k.versions, k.cleared_versions):
        assert key.replace("{default}", "{ns}") in doc, key
    for script in (*STATE_SCRIPTS, *REGISTRY_SCRIPTS):
        assert f"{script}.lua" in doc
    assert "version:<name>" in doc and '"op": "version"' in doc
