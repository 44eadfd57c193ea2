#!/usr/bin/env bash
# One command on a fresh machine: create .venv with the pinned stack, then run the main job — a real
# sweep on the built-in adaptation world (rs-small-clip is pretrained once and cached on first use).
# Extra arguments go to the sweep, e.g. ./quickstart.sh --trials 4
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch is pinned in the same pip command as open_clip, or pip silently swaps it (it resolves open_clip's torch requirement on its own)
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
export HF_HUB_OFFLINE=1
exec .venv/bin/ranksearch sweep search_spaces/world.yaml "$@"
