"""The whole mesh, once per test session: ``weir up`` on the shipped example plus the tests' own
manifests (``manifests/``), in a node network namespace and a root directory of its own, so the
bridge, the daemons' sockets and every rule stay out of the host. ``weir down`` at the end, and
the session fails if it left a namespace, a process or a file behind.

Certificates live 30 s (``--workload-cert-ttl``), so every sidecar rotates its certificate
every 15 s while the tests run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weir.install.embedded import State, read_state
from weir.install.procs import http_get, in_node
from weir.netns import NetNS, run_in
from weir.runtime.node import NodeConfig, load_node
from weir.runtime.pods import Runtime
from weir.runtime.shim import processes_in

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "mesh"
CERT_TTL = "30s"
UP_TIMEOUT = 240


@dataclass
class Mesh:
    root: str
    netns: str
    report: dict[str, Any]
    up_output: str

    @property
    def state(self) -> State:
        return read_state(self.root)

    @property
    def node(self) -> NodeConfig:
        return load_node(self.root)

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.node)

    def weir(self, *args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "WEIR_ROOT": self.root}
        out = subprocess.run([sys.executable, "-m", "weir", *args], capture_output=True, text=True, env=env,
                             timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"weir {' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def exec(self, pod: str, *argv: str, namespace: str = "demo", timeout: float = 180) -> tuple[int, str]:
        result = self.runtime.exec(namespace, pod, None, list(argv), capture=True, timeout=timeout)
        return result.returncode, result.stdout

    def load(self, pod: str, url: str, count: int, *, namespace: str = "demo", concurrency: int = 1,
             interval: float = 0.0) -> dict[str, Any]:
        argv = ["weir", "example-app", "load", url, "-n", str(count), "-c", str(concurrency),
                "--interval", str(interval)]
        _, out = self.exec(pod, *argv, namespace=namespace)
        return json.loads(out)

    def pod_ip(self, namespace: str, name: str) -> str:
        return str(self.runtime.get(namespace, name).status["podIP"])

    def netns_of(self, namespace: str, name: str) -> str:
        return self.runtime.get(namespace, name).netns

    def envoy_pids(self, namespace: str, name: str) -> list[int]:
        found = []
        for pid in processes_in(NetNS(self.netns_of(namespace, name))):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "envoy":
                    found.append(pid)
            except OSError:
                continue
        return found

    def admin(self, namespace: str, name: str, path: str) -> str:
        got = run_in(NetNS(self.netns_of(namespace, name)), lambda: http_get(f"http://127.0.0.1:15000{path}"))
        assert got is not None, f"Envoy admin {path} in {namespace}/{name}: {got}"
        assert got[0] == 200, f"Envoy admin {path} in {namespace}/{name}: {got}"
        return got[1]

    def agent_metric(self, namespace: str, name: str, metric: str) -> float | None:
        got = run_in(NetNS(self.netns_of(namespace, name)),
                     lambda: http_get("http://127.0.0.1:15020/stats/prometheus"))
        if got is None:
            return None
        for line in got[1].splitlines():
            if line.startswith(metric + " ") or line.startswith(metric + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def syncz(self) -> list[dict[str, Any]]:
        state = self.state
        got = in_node(state, lambda: http_get(f"{state.debug_url}/debug/syncz"))
        assert got is not None, f"control plane /debug/syncz: {got}"
        assert got[0] == 200, f"control plane /debug/syncz: {got}"
        return list(json.loads(got[1]))

    def pod_logs(self, namespace: str, name: str, container: str = "app") -> str:
        return Path(self.runtime.log_path(self.runtime.get(namespace, name), container)).read_text()


def _pod_namespaces(root: str) -> list[str]:
    """The network namespaces of the mesh's pods (read before ``weir down``)."""
    try:
        return [r.netns for r in Runtime(load_node(root)).pods() if r.netns]
    except Exception:  # no node: up failed early
        return []


def _leftovers(root: str, pod_namespaces: list[str]) -> list[str]:
    problems = []
    if os.path.exists(root) and os.listdir(root):
        problems.append(f"{root} still holds {os.listdir(root)}")
    left = [n for n in pod_namespaces if os.path.exists(n)]
    if left:
        problems.append(f"network namespaces left: {left}")
    return problems


@pytest.fixture(scope="session")
def mesh() -> Iterator[Mesh]:
    tag = uuid.uuid4().hex[:6]
    netns = f"weirnode-{tag}"
    root = tempfile.mkdtemp(prefix="weir-e2e-")
    os.chmod(root, 0o755)  # noqa: S103 - the sidecars (uid 1337) and apps (uid 1000) read their pod files here
    subprocess.run(["ip", "netns", "add", netns], check=True, capture_output=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, capture_output=True)
    octet = 100 + int(tag[:2], 16) % 100
    report_path = os.path.join(tempfile.gettempdir(), f"weir-e2e-report-{tag}.json")
    try:
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "weir", "up", str(EXAMPLE), str(HERE / "manifests"), "--root", root,
             "--node-netns", f"/var/run/netns/{netns}", "--bridge", f"wbr{tag}", "--subnet", f"10.{octet}.0.0/16",
             "--workload-cert-ttl", CERT_TTL, "--timeout", "120", "--report", report_path],
            capture_output=True, text=True, timeout=UP_TIMEOUT, check=False)
        output = out.stdout + out.stderr
        print(f"weir up took {time.monotonic() - started:.1f}s:\n{output}")
        assert out.returncode == 0, f"weir up failed (exit {out.returncode}):\n{output}"
        report = json.loads(Path(report_path).read_text())
        yield Mesh(root=root, netns=f"/var/run/netns/{netns}", report=report, up_output=output)
    finally:
        pod_namespaces = _pod_namespaces(root)
        down = subprocess.run([sys.executable, "-m", "weir", "down", "--root", root], capture_output=True,
                              text=True, timeout=UP_TIMEOUT, check=False)
        problems = _leftovers(root, pod_namespaces)
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        with_report = Path(report_path)
        with_report.unlink(missing_ok=True)
        assert down.returncode == 0, f"weir down failed:\n{down.stdout}\n{down.stderr}"
        assert not problems, "weir down left: " + "; ".join(problems)
