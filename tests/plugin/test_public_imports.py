"""The vLLM plugin is a separate distribution (``pausesvc-vllm``, requiring ``pausesvc``): it
may use only the core's public names, so a refactor of the core cannot break it silently."""

from __future__ import annotations

import ast
from pathlib import Path

import pausesvc

PLUGIN = Path(__file__).resolve().parents[2] / "vllm_plugin" / "pausesvc_vllm"


#: names the plugin gives core objects (``rt.client``, ``w = self.watcher`` ...)
CORE_OBJECTS = {"client", "replica", "watcher", "w", "pauses"}


def _private_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pausesvc"):
            parts = node.module.split(".")
            if parts[0] == "pausesvc" and any(p.startswith("_") for p in parts[1:]):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            elif parts[0] == "pausesvc":
                found += [
                    f"line {node.lineno}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") or (len(parts) == 1 and a.name not in pausesvc.__all__)
                ]
        elif isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {a.name}"
                for a in node.names
                if a.name.startswith("pausesvc.") and any(p.startswith("_") for p in a.name.split(".")[1:])
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and (
                (isinstance(node.value, ast.Attribute) and node.value.attr in CORE_OBJECTS)
                or (isinstance(node.value, ast.Name) and node.value.id in CORE_OBJECTS)
            )
        ):
            # rt.client._pause_args(...), self.watcher._proof: private members of core objects
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_plugin_uses_only_public_names_of_the_core() -> None:
    offences = {
        path.name: uses
        for path in sorted(PLUGIN.glob("*.py"))
        if (uses := _private_uses(ast.parse(path.read_text(), filename=str(path))))
    }
    assert not offences, offences


def test_the_checker_sees_private_uses() -> None:
    src = (
        "from pausesvc.client._async import x\nfrom pausesvc import _y\nrt.client._run('pause')\n"
        "w.watcher._proof\nimport pausesvc.client._base\n"
    )
    assert len(_private_uses(ast.parse(src))) == 5
