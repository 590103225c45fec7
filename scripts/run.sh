#!/usr/bin/env bash
# Runs weir's main job on a fresh Debian 12 machine (as root): installs what it needs, then
# brings the example mesh up (`weir up`: control plane, node agent with weir-cni, pods with
# injected Envoy sidecars), sends traffic through it and prints what the mesh did. The mesh
# stays up: `.venv/bin/weir status` shows it, `.venv/bin/weir down` removes all of it.
# Extra args go to `weir up` (e.g. a directory of your own manifests, --subnet, --keep-on-failure).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/weir up "$@"
