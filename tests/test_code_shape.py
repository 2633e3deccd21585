"""Both packages stay readable: no function of ``pausesvc`` or of the vLLM plugin is over 60
lines or over McCabe complexity 14 (ruff's C901 also runs on them in CI, from pyproject.toml).

Lines are counted the AST's way (``end_lineno - lineno + 1``: the signature, the docstring and the
body); complexity is ruff's C901, run from next to ``sys.executable`` (a missing ruff fails, it
does not skip).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "vllm_plugin" / "pausesvc_vllm"
CORE = ROOT / "pausesvc"
PACKAGES = (CORE, PLUGIN)
MAX_LINES = 60
MAX_COMPLEXITY = 14


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    return (node.end_lineno or node.lineno) - node.lineno + 1


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{path.parent.name}/{path.name}:{node.lineno} {node.name} is {_length(node)} lines"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and _length(node) > MAX_LINES
    ]


def _ruff_c901(path: Path) -> subprocess.CompletedProcess[str]:
    """ruff's C901 at :data:`MAX_COMPLEXITY` on ``path`` (exit 1: a function over it)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--isolated",
            "--no-cache",
            "--output-format",
            "concise",
            "--select",
            "C901",
            "--config",
            f"lint.mccabe.max-complexity={MAX_COMPLEXITY}",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # a missing ruff must fail the test, not pass as "no violation" or hide as a violation
    assert "No module named ruff" not in result.stderr, result.stderr
    return result


def test_the_sources_are_found() -> None:
    assert (PLUGIN / "_gate.py").is_file(), PLUGIN
    assert (CORE / "watcher.py").is_file() and (CORE / "protocol" / "view.py").is_file(), CORE


def test_no_function_of_the_packages_is_over_60_lines() -> None:
    offences = [o for pkg in PACKAGES for path in sorted(pkg.rglob("*.py")) for o in _long_functions(path)]
    assert not offences, "\n".join(offences)


def test_no_function_of_the_packages_is_over_complexity_14() -> None:
    for pkg in PACKAGES:
        result = _ruff_c901(pkg)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_shape_checks_fail_on_a_long_complex_function(tmp_path: Path) -> None:
    """The checks are not vacuous: a function of 61 lines and complexity 15 is caught by both."""
    body = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(14))
    body += "".join(f"    y = {i}\n" for i in range(61 - 1 - 28 - 1))
    source = f"def f(x):\n{body}    return y\n"
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    assert _long_functions(bad) == [f"{tmp_path.name}/bad.py:1 f is 61 lines"]
    result = _ruff_c901(bad)
    assert result.returncode == 1 and "C901" in result.stdout, result.stdout + result.stderr
