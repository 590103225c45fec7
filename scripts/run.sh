#!/usr/bin/env bash
# Runs weir's main job on a fresh Debian 12 machine (as root): installs what it needs, then
# shows traffic capture end to end in network namespaces it creates and removes itself.
# Extra args go to `weir demo` (e.g. --backend nftables).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/weir demo "$@"
