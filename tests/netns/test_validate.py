"""``weir capture validate`` (Istio's istio-validation) in a real pod namespace, as uid 1337.

The probe runs as its own process, as in a pod: ``--user`` drops the whole process's
privileges, which must not happen to the test runner.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from weir.capture.apply import Backend
from weir.capture.pod import spec_from_pod
from weir.netns import lab
from weir.netns.lab import Host

from .helpers import BACKENDS, FAMILIES, backend_id, executor

PREFIX = "wva"
TIMEOUT = "2"
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "default"},
       "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}}


@pytest.fixture
def host() -> Iterator[Host]:
    with lab.topology(1, prefix=PREFIX) as topo:
        yield topo.hosts[0]


def validate(host: Host, family: int) -> subprocess.CompletedProcess[str]:
    """``weir capture validate --netns PATH --user 1337 --timeout 2`` (``--ipv6`` for IPv6)."""
    argv = [sys.executable, "-m", "weir.cli.main", "capture", "validate", "--netns", host.path, "--user", "1337",
            "--timeout", TIMEOUT, *(["--ipv6"] if family == 6 else [])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f"ipv{f}")
@pytest.mark.parametrize("backend", BACKENDS, ids=backend_id)
def test_validation_passes_with_the_pods_rules(host: Host, tmp_path: Path, backend: Backend, family: int) -> None:
    pod_spec = spec_from_pod(POD, [host.ipv6 if family == 6 else host.ipv4])
    assert pod_spec.ipv6 == (family == 6)
    executor(tmp_path).apply(pod_spec, host.ns, backend)
    out = validate(host, family)
    assert out.returncode == 0, out.stderr
    assert f"validation passed: {'::6' if family == 6 else '127.0.0.6'}:15002 was redirected" in out.stdout


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f"ipv{f}")
def test_validation_fails_without_rules(host: Host, tmp_path: Path, family: int) -> None:
    # The pod raced the node agent: rules came and went (or never came).
    pod_spec = spec_from_pod(POD, [host.ipv6 if family == 6 else host.ipv4])
    ex = executor(tmp_path)
    ex.apply(pod_spec, host.ns, Backend.IPTABLES_NFT)
    ex.remove(host.ns, pod_spec, Backend.IPTABLES_NFT)
    out = validate(host, family)
    assert out.returncode == 126, out.stdout + out.stderr
    assert "validation failed" in out.stderr
    assert "made as uid 1337" in out.stderr
    assert "Detail: last attempt:" in out.stderr
    if family == 4:
        assert "connection refused (nothing redirected it)" in out.stderr
    assert "validation passed" not in out.stdout
