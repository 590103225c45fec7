#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine (as root): installs what it needs,
# then lint (ruff), types (mypy --strict), layers (import-linter) and every test tier
# (unit, golden, netns; privileged tiers never skip when CI=true). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== ruff";          .venv/bin/ruff check src tests
echo "== mypy";          .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports
echo "== pytest"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi

# The benchmarks at their quick size: they must keep working; no time is asserted.
if [ "$rc" -eq 0 ] && [ $# -eq 0 ]; then
  echo "== bench (quick)"
  bash bench/run_all.sh --quick || rc=$?
fi

# The host's own netns must be untouched and no test namespace may be left behind.
if iptables-save 2>/dev/null | grep -q 'ISTIO_' || nft list tables 2>/dev/null | grep -q 'istio-proxy'; then
  echo "the host's own network namespace has weir/Istio capture rules after the tests" >&2
  rc=1
fi
if [ -e /opt/cni/bin/weir-cni ] || grep -qls '"weir-cni"' /etc/cni/net.d/* 2>/dev/null; then
  echo "weir-cni was left in the host's CNI directories (/opt/cni/bin, /etc/cni/net.d)" >&2
  rc=1
fi
if ip netns list 2>/dev/null | grep -qE '^(wt|wdemo|weir-|weirnode-)'; then
  echo "test network namespaces were left behind: $(ip netns list | grep -E '^(wt|wdemo|weir-|weirnode-)' | tr '\n' ' ')" >&2
  rc=1
fi
exit "$rc"
