"""The benchmarks' lab: a node namespace, fresh pod namespaces, the node agent as a real
process, the weir-cni plugin built as its zipapp, and a timed way to exec a plugin.

Everything lives in namespaces and a temporary directory this module creates, with unique
names, and is removed when the ``Lab`` context exits, also on an error or Ctrl-C (SIGTERM is
turned into KeyboardInterrupt by ``stop_on_sigterm``). The plugins run inside the node
namespace, as the runtime would run them in the host's: the bridge they create and the
routes they add are the node namespace's, never the host's. The agent runs there too.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from weir import netns
from weir.cni.bundle import build
from weir.cni.events import AgentClient, AgentUnavailable
from weir.netns import NetNS

CNI_DIR = "/usr/lib/cni"
CNI_VERSION = "1.0.0"
POD_NAMESPACE = "bench"
SUBNET = "10.213.0.0/16"  # inside the node namespace only
AGENT_START_TIMEOUT = 20.0
EXEC_TIMEOUT = 60.0


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=EXEC_TIMEOUT)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def stop_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so that every ``finally`` cleans up."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# ---- pod manifests ----------------------------------------------------------------------------


def pod_manifest(name: str, injected: bool) -> dict[str, Any]:
    """A Pod as the agent looks it up: with the injector's sidecar (captured, the shape of
    ``weir/examples/pod.yaml``) or a plain one-container pod (passes through)."""
    meta: dict[str, Any] = {"name": name, "namespace": POD_NAMESPACE, "labels": {"app": name}}
    containers: list[dict[str, Any]] = [{"name": "app", "ports": [{"containerPort": 8080}]}]
    spec: dict[str, Any] = {"containers": containers}
    if injected:
        meta["labels"]["security.istio.io/tlsMode"] = "istio"
        meta["annotations"] = {
            "sidecar.istio.io/status": '{"initContainers":["istio-validation"],"containers":["istio-proxy"]}',
            "traffic.sidecar.istio.io/excludeInboundPorts": "15020",
            "traffic.sidecar.istio.io/includeOutboundIPRanges": "*",
            "traffic.sidecar.istio.io/includeInboundPorts": "*",
        }
        proxy_ctx = {"runAsUser": 1337, "runAsGroup": 1337}
        spec["initContainers"] = [{"name": "istio-validation", "args": ["istio-iptables", "--run-validation",
                                                                         "--skip-rule-apply"],
                                   "securityContext": {**proxy_ctx, "capabilities": {"drop": ["ALL"]}}}]
        containers.append({"name": "istio-proxy", "args": ["proxy", "sidecar"], "securityContext": proxy_ctx})
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def bench_pods(burst_size: int = 20) -> dict[str, bool]:
    """The pods the agent knows (name -> injected): ``plain`` (no sidecar), ``injected`` and
    ``burst-NN`` (injected). The agent's pod directory holds all of them in every benchmark."""
    return {"plain": False, "injected": True, **{f"burst-{i:02d}": True for i in range(burst_size)}}


# ---- timed plugin execution -------------------------------------------------------------------


@dataclass(frozen=True)
class Exec:
    """One plugin run: perf_counter() right before and right after the subprocess."""

    start: float
    end: float
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    def describe(self) -> str:
        return f"exit {self.returncode}: {self.stdout.decode(errors='replace').strip()[:300]} " \
               f"{self.stderr.decode(errors='replace').strip()[:300]}"


def cni_env(command: str, container_id: str = "", netns_path: str = "", pod: str = "") -> dict[str, str]:
    """What a runtime sets: the CNI_* variables (``IgnoreUnknown=1`` first, as containerd and
    kubelet send it, or the reference plugins refuse the K8S_* keys) and a PATH."""
    args = ""
    if pod:
        args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={POD_NAMESPACE};K8S_POD_NAME={pod};"
                f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID=uid-{container_id}")
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns_path,
            "CNI_IFNAME": "eth0" if container_id else "", "CNI_ARGS": args, "CNI_PATH": CNI_DIR,
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def exec_in(node: NetNS, argv: list[str], env: Mapping[str, str], stdin: bytes) -> Exec:
    """Run ``argv`` inside ``node``; only the subprocess itself is inside the timed span (the
    thread that enters the namespace is made before the clock starts)."""

    def go() -> Exec:
        start = time.perf_counter()
        done = subprocess.run(argv, input=stdin, env=dict(env), capture_output=True, check=False,
                              timeout=EXEC_TIMEOUT)
        end = time.perf_counter()
        return Exec(start, end, done.returncode, done.stdout, done.stderr)

    return netns.run_in(node, go)


# ---- the lab ----------------------------------------------------------------------------------


@dataclass
class Lab:
    tag: str
    tmp: Path
    node: NetNS
    node_name: str
    plugin: str  # the weir-cni zipapp
    run_dir: Path
    pods_dir: Path
    agent_log: Path
    agent: subprocess.Popen[bytes] | None = None
    _pod_netns: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: iter(range(1 << 30)))

    # -- lifecycle --

    @classmethod
    @contextlib.contextmanager
    def open(cls, pods: Mapping[str, bool]) -> Iterator[Lab]:
        """A lab whose agent knows ``pods`` (name -> injected). Removed on exit, whatever happens."""
        tag = secrets.token_hex(3)
        tmp = Path(tempfile.mkdtemp(prefix=f"weir-bench-{tag}-"))
        node_name = f"wbn{tag}"
        lab: Lab | None = None
        try:
            sh("ip", "netns", "add", node_name)
            sh("ip", "-n", node_name, "link", "set", "lo", "up")
            lab = cls(tag, tmp, NetNS(f"/var/run/netns/{node_name}"), node_name,
                      build(str(tmp / "bin" / "weir-cni")), tmp / "run", tmp / "pods", tmp / "agent.log")
            lab.pods_dir.mkdir()
            for name, injected in pods.items():
                text = yaml.safe_dump(pod_manifest(name, injected))
                (lab.pods_dir / f"{POD_NAMESPACE}-{name}.yaml").write_text(text)
            lab.start_agent()
            yield lab
        finally:
            if lab is not None:
                lab.close()
            sh("ip", "netns", "del", node_name, check=False)
            shutil.rmtree(tmp, ignore_errors=True)

    def start_agent(self) -> None:
        """``python -m weir node-agent run`` inside the node namespace; waits until its socket
        answers STATUS, or raises with the agent's log."""
        argv = ["ip", "netns", "exec", self.node_name, sys.executable, "-m", "weir", "node-agent", "run",
                "--run-dir", str(self.run_dir), "--pods-dir", str(self.pods_dir),
                # only the plugin's events are measured: no CNI install into the machine's dirs
                "--install-cni", "false", "--listen-address", "127.0.0.1"]
        self.agent = start_agent(argv, self.agent_log, str(self.run_dir / "pluginevent.sock"))

    def agent_tail(self, lines: int = 20) -> str:
        return log_tail(self.agent_log, lines)

    def close(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        for name in sorted(self._pod_netns):
            sh("ip", "netns", "del", name, check=False)
        self._pod_netns.clear()

    # -- pods --

    def new_pod_netns(self) -> tuple[str, NetNS]:
        """A fresh, empty pod namespace with ``lo`` up (as a runtime's sandbox)."""
        with self._lock:
            name = f"wbp{self.tag}-{next(self._ids)}"
            self._pod_netns.add(name)
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name, NetNS(f"/var/run/netns/{name}")

    def drop_pod_netns(self, name: str) -> None:
        sh("ip", "netns", "del", name, check=False)
        with self._lock:
            self._pod_netns.discard(name)

    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    def container_id(self, kind: str) -> str:
        return f"bench{self.tag}{kind}{self.next_id()}"

    # -- plugin configurations --

    def weir_conf(self, netns_path: str, n: int) -> bytes:
        """weir-cni alone, with the prevResult a runtime passes when it is chained after bridge."""
        address = f"10.214.{(n // 250) % 250}.{n % 250 + 2}"
        prev = {"cniVersion": CNI_VERSION,
                "interfaces": [{"name": f"wbb{self.tag}", "mac": "02:00:00:00:00:01"},
                               {"name": "veth0bench", "mac": "02:00:00:00:00:02"},
                               {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": netns_path}],
                "ips": [{"address": f"{address}/16", "gateway": "10.214.0.1", "interface": 2}],
                "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
        return json.dumps({"cniVersion": CNI_VERSION, "name": "k8s-pod-network", "type": "weir-cni",
                           "cni_agent_run_dir": str(self.run_dir), "prevResult": prev}).encode()

    def bridge_conf(self) -> bytes:
        return json.dumps({"cniVersion": CNI_VERSION, "name": f"bench{self.tag}", "type": "bridge",
                           "bridge": f"wbb{self.tag}", "isGateway": True, "ipMasq": False,
                           "ipam": {"type": "host-local", "dataDir": str(self.tmp / "ipam"),
                                    "ranges": [[{"subnet": SUBNET}]]}}).encode()

    def attachment_record(self, container_id: str) -> dict[str, Any] | None:
        """The agent's record of an ADD (``captured`` says whether it programmed rules)."""
        path = self.run_dir / "state" / "attachments" / f"{container_id}_eth0.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


# ---- where it ran -----------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except OSError:
        return ""
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""


ROOT = Path(__file__).resolve().parents[1]
COMMIT_ENV = "WEIR_BENCH_COMMIT"  # set by run_at_ref for the run it starts


def run_at_ref(ref: str, script: str, argv: list[str]) -> int:
    """Run ``script argv`` against weir as committed at ``ref``: ``src/`` of that commit is
    exported (``git archive``) to a temporary directory put first on PYTHONPATH, so the
    plugin, the agent and the benchmark all use it, whatever the working tree holds."""
    sha = sh("git", "-C", str(ROOT), "rev-parse", "--short", f"{ref}^{{commit}}").stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix=f"weir-bench-src-{sha}-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", sha, "src"],
                                 capture_output=True, check=True, timeout=EXEC_TIMEOUT).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True, timeout=EXEC_TIMEOUT)
        env = {**os.environ, "PYTHONPATH": str(tmp / "src"), COMMIT_ENV: sha}
        child = subprocess.Popen([sys.executable, script, *argv], env=env)
        try:
            return child.wait()
        except KeyboardInterrupt:  # let the child remove its lab first
            child.send_signal(signal.SIGINT)
            return child.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def weir_source() -> str:
    import weir

    return str(Path(weir.__file__).resolve().parents[1])


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    commit = os.environ.get(COMMIT_ENV, "")
    if not commit:  # the working tree: flag changes under src/ (tracked or not)
        commit = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
        if _first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"]):
            commit += "-dirty"
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "git_commit": commit,
        "weir_source": weir_source(),
        "plugin_python": _first_line(["/usr/bin/python3", "--version"]),
        "cni_plugins": _first_line(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"]),
        "iptables": _first_line(["iptables", "--version"]),
    }


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no agent log)"


def start_agent(argv: list[str], log_path: Path, socket_path: str) -> subprocess.Popen[bytes]:
    """Start the node agent (``argv``, in its own session: Ctrl-C reaches the benchmark, which stops
    it in order) and wait until its plugin socket answers STATUS; raises with the agent's log."""
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    client = AgentClient(socket_path, timeout=2)
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while True:
        if agent.poll() is not None:
            raise RuntimeError(f"the node agent exited ({agent.returncode}):\n{log_tail(log_path)}")
        try:
            client.status()
            return agent
        except AgentUnavailable:
            if time.monotonic() > deadline:
                agent.terminate()
                raise RuntimeError(f"the node agent did not answer within {AGENT_START_TIMEOUT:.0f}s:\n"
                                   f"{log_tail(log_path)}") from None
            time.sleep(0.05)
