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

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(os.environ.get("WEIR_GOLDEN_DIR", ROOT.parent / "shared" / "golden"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "/netns/" in str(item.fspath) or "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.privileged)


def _skip_unless_ci(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason}; CI=true forbids skipping it")
    pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None and os.geteuid() != 0:
        _skip_unless_ci("needs root (runs in CI as root)")
    if item.get_closest_marker("cni_plugins") is not None and not os.access("/usr/lib/cni/bridge", os.X_OK):
        _skip_unless_ci("needs the reference CNI plugins in /usr/lib/cni (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    if not (GOLDEN / "cases.json").exists():
        message = f"Istio golden data not found at {GOLDEN} (set WEIR_GOLDEN_DIR)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
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
