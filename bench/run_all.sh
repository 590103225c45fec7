#!/bin/sh
# Every benchmark, one after the other: CNI ADD, pod start, the data plane, the control plane at
# scale. Full size by default (about 25 minutes on 2 CPUs: 1 + 4 + 7 + 12); `--quick` is the
# smoke size CI runs (about 2 minutes) to keep them working. Other arguments are passed on to
# each (e.g. `--ref HEAD` to measure the committed code). Needs root, the reference CNI plugins,
# nginx-light, haproxy and nghttp2-client (scripts/setup.sh installs them). Results: bench/results/
# (JSON + PNG per benchmark); published figures: docs/benchmarks.md.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" bench/cni_add.py "$@"
"$PYTHON" bench/pod_start.py "$@"
"$PYTHON" bench/dataplane.py "$@"
"$PYTHON" bench/control_scale.py "$@"
