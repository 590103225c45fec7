"""`weir up` that cannot finish takes down everything it made (or keeps it, when asked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.runtime_helpers import alive
from weir.install.embedded import State

BROKEN = """\
apiVersion: v1
kind: Namespace
metadata: {name: broken, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: never-ready, namespace: broken}
spec:
  containers:
  - name: app
    command: [/nonexistent/binary]
"""


@pytest.fixture
def node() -> Iterator[tuple[str, str, str]]:
    """(root, node netns path, tag): a fresh root and node namespace, removed afterwards."""
    tag = uuid.uuid4().hex[:6]
    netns = f"weirnode-{tag}"
    root = tempfile.mkdtemp(prefix="weir-upfail-")
    os.chmod(root, 0o755)  # noqa: S103 - the sidecars (uid 1337) read their pod files here
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True)
    try:
        yield root, f"/var/run/netns/{netns}", tag
    finally:
        subprocess.run([sys.executable, "-m", "weir", "down", "--root", root], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        subprocess.run(["rm", "-rf", root], check=False)


def _up(root: str, netns: str, tag: str, manifest: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    octet = 100 + int(tag[:2], 16) % 100
    return subprocess.run(
        [sys.executable, "-m", "weir", "up", str(manifest), "--root", root, "--node-netns", netns,
         "--bridge", f"wbf{tag}", "--subnet", f"10.{octet}.0.0/16", "--timeout", "15", *extra],
        capture_output=True, text=True, timeout=180, check=False)


def test_a_pod_that_never_gets_ready_fails_up_and_everything_is_removed(node: tuple[str, str, str],
                                                                          tmp_path: Path) -> None:
    root, netns, tag = node
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(BROKEN)
    out = _up(root, netns, tag, manifest)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "not ready after 15s: broken/never-ready" in out.stderr
    assert "removing what it made" in out.stdout
    assert os.listdir(root) == []  # node files, pod files, logs, state: all gone
    links = subprocess.run(["ip", "-n", os.path.basename(netns), "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    assert f"wbf{tag}" not in links  # the bridge too


def test_keep_on_failure_leaves_the_mesh_for_inspection_until_down(node: tuple[str, str, str],
                                                                    tmp_path: Path) -> None:
    root, netns, tag = node
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(BROKEN)
    out = _up(root, netns, tag, manifest, "--keep-on-failure")
    assert out.returncode == 1, out.stdout + out.stderr
    state = State.load(root)
    assert state is not None
    assert state.phase == "failed"
    status = subprocess.run([sys.executable, "-m", "weir", "status", "--root", root], capture_output=True,
                            text=True, check=False)
    assert "never-ready" in status.stdout
    pod = subprocess.run([sys.executable, "-m", "weir", "pod", "--root", root, "get", "-n", "broken",
                          "never-ready", "-o", "json"], capture_output=True, text=True, check=True)
    [app] = json.loads(pod.stdout)["status"]["containerStatuses"]
    assert app["lastState"]["terminated"]["message"] == "cannot start /nonexistent/binary: No such file or directory"
    assert app["state"]["waiting"]["reason"] == "CrashLoopBackOff"  # why it never got ready, for the user to see
    down = subprocess.run([sys.executable, "-m", "weir", "down", "--root", root], capture_output=True, text=True,
                          check=False)
    assert down.returncode == 0, down.stderr
    assert os.listdir(root) == []
    assert not [pid for pid in state.processes.values() if alive(pid)]
