"""What can be checked of docker/ without a Docker engine: the files parse, every path they
reference exists, every entry point and middleware they name is real. (Nothing is built or run
here; docs/operations.md says so.)"""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def compose() -> dict[str, Any]:
    data = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", ["Dockerfile.service", "Dockerfile.vllm"])
def test_dockerfile_copies_exist(name: str) -> None:
    ins = instructions(DOCKER / name)
    assert ins[0][0] in ("FROM", "ARG")
    known = {
        "FROM",
        "ARG",
        "ENV",
        "WORKDIR",
        "COPY",
        "RUN",
        "USER",
        "EXPOSE",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
        "LABEL",
    }
    for op, rest in ins:
        assert op in known, op
        if op == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src} does not exist"


def test_service_image_entry_point_is_the_cli() -> None:
    ins = dict(instructions(DOCKER / "Dockerfile.service"))
    assert ins["ENTRYPOINT"] == '["pausesvc"]' and ins["CMD"] == '["serve"]'
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["pausesvc"].split(":")
    cli = importlib.import_module(module)
    assert callable(getattr(cli, func))
    assert "serve" in cli.cli.commands  # type: ignore[attr-defined]
    assert (
        "service" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    assert 'pip install ".[service]"' in (DOCKER / "Dockerfile.service").read_text()


def test_vllm_image_builds_on_the_official_image_and_installs_the_plugin() -> None:
    text = (DOCKER / "Dockerfile.vllm").read_text()
    assert re.search(r"^FROM vllm/vllm-openai:", text, re.M)
    plugin = tomllib.loads((ROOT / "vllm_plugin" / "pyproject.toml").read_text())
    assert plugin["project"]["name"] == "pausesvc-vllm"
    assert "/opt/pausesvc-vllm" in text


def test_compose_wires_redis_service_and_two_gated_replicas() -> None:
    c = compose()
    services = c["services"]
    assert {"redis", "pausesvc", "vllm-0", "vllm-1"} <= set(services)
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])

    urls = {name: s["environment"]["PAUSESVC_REDIS_URL"] for name, s in services.items() if name != "redis"}
    assert set(urls.values()) == {"redis://redis:6379/0"}
    namespaces = {s["environment"]["PAUSESVC_NAMESPACE"] for n, s in services.items() if n != "redis"}
    assert len(namespaces) == 1

    for name in ("pausesvc", "vllm-0", "vllm-1"):
        build = services[name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve().exists()
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["pausesvc"]["environment"]["PAUSESVC_HOST"] == "0.0.0.0"
    assert "8470:8470" in services["pausesvc"]["ports"]

    middleware = "pausesvc_vllm.PauseGateMiddleware"
    for name in ("vllm-0", "vllm-1"):
        assert f"--middleware={middleware}" in services[name]["command"]
    module, attr = middleware.rsplit(".", 1)
    source = (ROOT / "vllm_plugin" / module / "__init__.py").read_text()
    assert re.search(rf"\b{attr}\b", source) and f'"{attr}"' in source


def test_every_pausesvc_variable_in_compose_is_a_setting() -> None:
    from pausesvc import Settings

    text = (DOCKER / "docker-compose.yml").read_text()
    fields = {f"PAUSESVC_{n.upper()}" for n in Settings.model_fields}
    used = set(re.findall(r"\bPAUSESVC_[A-Z0-9_]+", text))
    assert used and used <= fields, used - fields
