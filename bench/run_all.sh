#!/bin/sh
# Every benchmark at its quick size (a smoke run that keeps them working: about three minutes,
# needs root, the reference CNI plugins, nginx-light, haproxy and nghttp2-client). Arguments are
# passed on to each, e.g. `bench/run_all.sh --ref HEAD`. Full sizes: see bench/README.md.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" bench/cni_add.py --quick "$@"
"$PYTHON" bench/pod_start.py --quick "$@"
"$PYTHON" bench/dataplane.py --quick "$@"
"$PYTHON" bench/control_scale.py --quick "$@"
