"""The pod-start benchmark's lab: two embedded nodes in one node namespace, the node agent as a
real process, the pods the benchmark starts, and a runtime that times every plugin exec.

- A **node namespace** (``wsn<tag>``): the CNI plugins of both nodes run in it (``node_netns``),
  so their bridges, veths and portmap's rules are its own, never the host's. The agent runs
  there too, so its metrics (:15014) and health (:8000) ports are the namespace's.
- The **weir node** (root ``<tmp>/weir``): ``weir node init``'s chain, bridge + host-local,
  portmap, then weir-cni, with the node agent (``weir node-agent run --node-root``) reading
  the runtime's pod store, as ``weir up`` runs it.
- The **plain node** (root ``<tmp>/plain``): the same chain without weir-cni, as a node of a
  mesh without its CNI plugin (Istio with ``istio-init`` in every pod).
- Pods get a fresh uid each (their namespaces are ``weir-<uid[:12]>``), are removed by the
  runtime after each sample, and whatever is left when the run ends, fails or is interrupted
  (Ctrl-C, SIGTERM) is removed: pods by the runtime, then by pid the processes in namespaces
  this lab made, the namespaces, the agent, the temporary directory.

Kubernetes' Pod shapes are built here: the injected pod of ``examples/pods/injected.yaml``
(captured by weir-cni, proven by ``istio-validation`` as uid 1337 without capabilities), the
same pod with an ``istio-init``-style init container instead (root with NET_ADMIN and NET_RAW,
loading the same rule text with ``iptables-restore`` itself, as Istio's ``istio-iptables``
does), and a floor pod whose init container does nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lab import log_tail, start_agent

from weir import netns
from weir.netns import NetNS
from weir.platform.local import PodRecord
from weir.runtime.cni import Exec, Network
from weir.runtime.node import NodeConfig, init_node, load_node
from weir.runtime.pods import Runtime
from weir.runtime.shim import kill_processes_in

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pods" / "injected.yaml"
NAMESPACE = "bench"
NETNS_DIR = "/var/run/netns"
METRICS_PORT = 15014
HEALTH_PORT = 8000
STATUS_ANNOTATION = "sidecar.istio.io/status"
ISTIO_INIT_SCRIPT = ('rules=$(weir capture render --pod "$1") && '
                     'printf "%s\\n" "$rules" | iptables-nft-restore --noflush')
"""What the istio-init container runs: the rule text for its own pod, loaded by iptables-restore
in the namespace it runs in (Istio's istio-iptables builds the same text and does the same).
``weir capture apply`` cannot do it from inside: it refuses the caller's own namespace."""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


# ---- pod manifests ----------------------------------------------------------------------------


def _status_annotation(init: str) -> str:
    return json.dumps({"initContainers": [init], "containers": ["istio-proxy"], "volumes": [],
                       "imagePullSecrets": None, "revision": "default"}, separators=(",", ":"))


def injected_pod(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``examples/pods/injected.yaml`` named ``name``: captured by weir-cni, ``istio-validation``
    (``weir capture validate``, uid 1337, no capabilities) proves it, two stand-in containers."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(name=name, namespace=NAMESPACE, uid=str(uuid.uuid4()))
    doc["spec"]["terminationGracePeriodSeconds"] = 2
    doc["metadata"]["annotations"][STATUS_ANNOTATION] = _status_annotation("istio-validation")
    if env:
        for c in doc["spec"]["initContainers"]:
            c["env"] = [{"name": k, "value": v} for k, v in env.items()]
    return doc


def istio_init_pod(name: str, manifest_path: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The same pod as Istio injects it without CNI: an ``istio-init`` init container (root,
    NET_ADMIN + NET_RAW) that programs the pod's rules itself from ``manifest_path`` (this very
    manifest, written there by the caller). weir-cni passes such a pod through (Istio's rule)."""
    doc = injected_pod(name)
    doc["metadata"]["annotations"][STATUS_ANNOTATION] = _status_annotation("istio-init")
    doc["spec"]["initContainers"] = [{
        "name": "istio-init",
        "command": ["sh", "-c", ISTIO_INIT_SCRIPT, "istio-init", manifest_path],
        "securityContext": {"runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
                            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}},
        **({"env": [{"name": k, "value": v} for k, v in env.items()]} if env else {}),
    }]
    return doc


def floor_pod(name: str) -> dict[str, Any]:
    """The same pod with an init container that does nothing and no sidecar annotation: what
    the runtime itself costs (sandbox, shim, one init container, two containers)."""
    doc = injected_pod(name)
    del doc["metadata"]["annotations"][STATUS_ANNOTATION]
    doc["spec"]["initContainers"] = [{"name": "noop", "command": ["true"],
                                      "securityContext": {"runAsUser": 1337, "runAsGroup": 1337}}]
    return doc


# ---- a runtime that times its plugin execs ----------------------------------------------------


@dataclass(frozen=True)
class PluginCall:
    plugin: str
    command: str
    start: float  # perf_counter
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class TimedExec:
    """An ``Exec`` that records the wall time of every plugin it runs."""

    inner: Exec
    calls: list[PluginCall]

    def __call__(self, plugin_type: str, env: Mapping[str, str], stdin: str, /) -> tuple[str, str, int]:
        start = time.perf_counter()
        out = self.inner(plugin_type, env, stdin)
        self.calls.append(PluginCall(plugin_type, env.get("CNI_COMMAND", "?"), start, time.perf_counter()))
        return out


class TimedRuntime(Runtime):
    """The embedded runtime, its networks built with a :class:`TimedExec` (its constructor seam)."""

    def __init__(self, node: NodeConfig) -> None:
        super().__init__(node)
        self.calls: list[PluginCall] = []

    def network(self) -> Network:
        base = super().network()
        return Network(base.conflist, base.path, base.cache.root, exec=TimedExec(base.exec, self.calls))


# ---- the lab ----------------------------------------------------------------------------------


@dataclass
class PodLab:
    tag: str
    tmp: Path
    node_name: str
    nodes: dict[str, TimedRuntime] = field(default_factory=dict)  # "weir" | "plain"
    agent: subprocess.Popen[bytes] | None = None
    uids: set[str] = field(default_factory=set)

    @property
    def node_ns(self) -> NetNS:
        return NetNS(os.path.join(NETNS_DIR, self.node_name))

    @property
    def agent_log(self) -> Path:
        return self.tmp / "agent.log"

    @classmethod
    @contextlib.contextmanager
    def open(cls) -> Iterator[PodLab]:
        tag = secrets.token_hex(3)
        tmp = Path(tempfile.mkdtemp(prefix=f"weir-bench-pods-{tag}-"))
        tmp.chmod(0o755)  # the nodes' `weir` launcher below must be reachable for uid 1337 (istio-validation)
        lab = cls(tag, tmp, f"wsn{tag}")
        try:
            sh("ip", "netns", "add", lab.node_name)
            sh("ip", "-n", lab.node_name, "link", "set", "lo", "up")
            for i, kind in enumerate(("weir", "plain")):
                lab.nodes[kind] = TimedRuntime(lab.init_node(kind, i))
            lab.start_agent()
            yield lab
        finally:
            lab.close()

    def init_node(self, kind: str, i: int) -> NodeConfig:
        config = init_node(NodeConfig(root=str(self.tmp / kind), bridge=f"ws{kind[0]}{self.tag}",
                                      subnet=f"10.216.{i}.0/24", node_netns=self.node_ns.path, backoff_seconds=1.0))
        if kind == "plain":  # the same chain without weir-cni
            path = Path(config.conflist)
            doc = json.loads(path.read_text())
            doc["plugins"] = [p for p in doc["plugins"] if p["type"] != "weir-cni"]
            path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return load_node(config.root)

    def start_agent(self) -> None:
        """``weir node-agent run --node-root`` in the node namespace (no install into any CNI
        directory: the node's conflist already chains weir-cni); waits for its socket."""
        node = self.nodes["weir"].node
        argv = ["ip", "netns", "exec", self.node_name, sys.executable, "-m", "weir", "node-agent", "run",
                "--node-root", node.root, "--install-cni", "false", "--listen-address", "127.0.0.1",
                "--monitoring-port", str(METRICS_PORT), "--readiness-port", str(HEALTH_PORT), "--log-format", "json"]
        self.agent = start_agent(argv, Path(self.agent_log), os.path.join(node.run_dir, "pluginevent.sock"))

    def agent_tail(self, lines: int = 20) -> str:
        return log_tail(Path(self.agent_log), lines)

    def agent_metrics(self) -> str:
        """The agent's Prometheus text, fetched inside the node namespace."""
        def get() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
                return str(r.read().decode())
        return netns.run_in(self.node_ns, get)

    def pod_file(self, name: str) -> Path:
        d = self.tmp / "manifests"
        d.mkdir(exist_ok=True, mode=0o755)
        return d / f"{name}.yaml"

    def logs(self, runtime: Runtime, record: PodRecord, lines: int = 15) -> str:
        """The tails of the pod's shim and container logs (for an error message)."""
        d = Path(runtime.node.log_dir) / f"{record.namespace}_{record.name}_{record.uid}"
        out = [f"--- {f.relative_to(d)}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:])
               for f in sorted(d.rglob("*.log"))]
        return "\n".join(out) or "(no logs)"

    # -- clean-up --

    def close(self) -> None:
        """Remove every pod (the runtime first, then by pid what is left in their namespaces),
        stop the agent, delete the node namespace and the temporary directory."""
        try:
            for runtime in self.nodes.values():
                for record in runtime.pods():
                    self.uids.add(record.uid)
                    with contextlib.suppress(Exception):
                        runtime.remove(record.namespace, record.name, timeout=10)
                    if record.shim_pid > 0 and _is_shim(record.shim_pid, runtime.node.db):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(record.shim_pid, signal.SIGKILL)
            for uid in self.uids:
                path = os.path.join(NETNS_DIR, f"weir-{uid[:12]}")
                if os.path.exists(path):
                    kill_processes_in(NetNS(path))
                    sh("ip", "netns", "del", os.path.basename(path), check=False)
        finally:
            if self.agent is not None and self.agent.poll() is None:
                self.agent.send_signal(signal.SIGTERM)
                try:
                    self.agent.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.agent.kill()
                    self.agent.wait()
            sh("ip", "netns", "del", self.node_name, check=False)
            shutil.rmtree(self.tmp, ignore_errors=True)


def _is_shim(pid: int, db: str) -> bool:
    """Whether ``pid`` is still a shim of the store ``db`` (a pid this lab's runtime started)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"weir.runtime.shim" in argv and db.encode() in argv


# ---- the agent's histogram --------------------------------------------------------------------

_SAMPLE = re.compile(r"^weir_cni_add_duration_seconds_(sum|count)\s+(\S+)$", re.MULTILINE)


def add_histogram(text: str) -> tuple[float, int]:
    """(sum of seconds, count) of ``weir_cni_add_duration_seconds`` in Prometheus text."""
    found = {m.group(1): float(m.group(2)) for m in _SAMPLE.finditer(text)}
    if set(found) != {"sum", "count"}:
        raise RuntimeError("the agent's metrics have no weir_cni_add_duration_seconds histogram")
    return found["sum"], int(found["count"])


def add_buckets(text: str) -> dict[str, int]:
    """Cumulative bucket counts (``le`` -> count) of ``weir_cni_add_duration_seconds``."""
    pattern = re.compile(r'^weir_cni_add_duration_seconds_bucket\{le="([^"]+)"\}\s+(\S+)$', re.MULTILINE)
    return {m.group(1): int(float(m.group(2))) for m in pattern.finditer(text)}


def ref_env() -> dict[str, str]:
    """With ``--ref``, the weir the containers must import (the exported ``src/``), readable by
    uid 1337; empty for the working tree."""
    path = os.environ.get("PYTHONPATH", "")
    if not path or not os.environ.get("WEIR_BENCH_COMMIT"):
        return {}
    export = Path(path).parent
    if export.name.startswith("weir-bench-src-"):  # run_at_ref's mkdtemp (0700): let uid 1337 in
        export.chmod(0o755)
    return {"PYTHONPATH": path}

