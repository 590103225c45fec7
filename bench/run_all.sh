#!/bin/sh
# The benchmarks at their quick size (a smoke run: a few seconds, needs root and the reference
# CNI plugins). Arguments are passed on, e.g. `bench/run_all.sh --ref HEAD`.
# Full size: .venv/bin/python bench/cni_add.py  (see bench/README.md)
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" bench/cni_add.py --quick "$@"
