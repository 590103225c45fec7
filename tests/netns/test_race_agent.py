"""THE RACE with the REAL node agent process: pods that started before ``weir node-agent run``
had installed weir-cni, and that same process's repair controller fixing them, per repair mode.

Per mode (repair, delete, label), on a fresh world-traversable root (containers run the node's
``weir`` launcher as uid 1337) with its own node namespace, subnet and a 0.5 s crash-loop
back-off:

1. ``weir node init``; the agent process (``python -m weir node-agent run --node-root ROOT``,
   the mode's ``REPAIR_*`` environment, health and metrics on free ports of 127.0.0.1) comes up
   and reports /readyz 200 with weir-cni in the node's conflist and bin dir; then SIGTERM: it
   exits 0 and takes weir-cni out of both. That is the node start-up race ("the plugin is not
   installed yet"): the chain is bridge + portmap only.
2. Three copies of ``examples/pods/injected.yaml`` start with ``weir pod --root ROOT run -f``:
   uncaptured, their ``istio-validation`` exits 126 and crash-loops.
3. The agent process starts again. From its start until every pod is fixed as the mode
   promises (timed and printed):

   - repair: the same pod (same uid) captured in its recorded namespace, validation Completed
     (exit 0), Running;
   - delete: a new pod (new uid) in each one's place, captured at its ADD, Running;
   - label: ``cni.istio.io/uninitialized=true`` on each pod, and still no rules.

   Its /metrics show ``istio_cni_repair_pods_repaired_total{result="success",type=<mode>} 3.0``
   (and no failure or skip) and ``istio_cni_install_ready 1.0``.

Everything is undone also when the test fails: the agent is stopped (SIGTERM, else SIGKILL by
its pid), every pod removed with the runtime, the node namespace deleted; no pod namespace or
shim may be left. The host's netfilter rules, /etc/cni and /opt/cni are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import pytest

from weir.netns import NetNS
from weir.platform.local import PodRecord
from weir.runtime.node import load_node

from .cni_helpers import has_istio_rules, sh
from .runtime_helpers import (
    BACKOFF,
    NETNS_DIR,
    Node,
    completed_and_running,
    every_pod,
    labelled_uninitialized,
    netns_name,
    netns_names,
    new_tag,
    shim_pids,
    start_uncaptured,
    validation,
    wait_for,
)

pytestmark = [pytest.mark.cni_plugins, pytest.mark.timeout(90)]

T = TypeVar("T")

NAMESPACE = "race"
PODS = [f"agent-race-{i}" for i in range(3)]
POLL_INTERVAL = "1"  # REPAIR_POLL_INTERVAL: how often the agent reads the runtime's store
READY_WAIT = 20.0  # the agent's start to /readyz 200
STOP_WAIT = 15.0  # SIGTERM to exit (cleanup included)
RACE_WAIT = 30.0  # each pod's first validation failure (the example's probe times out after 5 s)
BOUND = 40.0  # the agent's start to every pod's outcome (Istio's TestCNIRaceRepair allows 80 s)
METRICS_WAIT = 5.0  # the counters may trail the store by an instant
PLUGIN = "weir-cni"
MODES = {
    "repair": {"REPAIR_REPAIR_PODS": "true", "REPAIR_DELETE_PODS": "false", "REPAIR_LABEL_PODS": "false"},
    "delete": {"REPAIR_REPAIR_PODS": "false", "REPAIR_DELETE_PODS": "true", "REPAIR_LABEL_PODS": "false"},
    "label": {"REPAIR_REPAIR_PODS": "false", "REPAIR_DELETE_PODS": "false", "REPAIR_LABEL_PODS": "true"},
}
DONE = {"repair": "repaired in place", "delete": "replaced, captured and running", "label": "labelled"}
REASONS = {"repair": "RepairedPod", "delete": "DeleteBrokenPod", "label": "LabelBrokenPod"}
# Settings the agent reads from the environment: none may leak in from the caller's.
_FOREIGN = ("REPAIR_", "WEIR_", "CNI_", "KUBERNETES_", "ISTIO_", "MOUNTED_CNI_NET_DIR", "CHAINED_CNI_PLUGIN",
            "EXCLUDE_NAMESPACES", "POD_NAMESPACE", "NATIVE_NFTABLES", "MONITORING_PORT", "KUBECONFIG",
            "KUBE_CA_FILE", "SKIP_TLS_VERIFY")


# ---- the node and its conflist ----------------------------------------------------------------


def make_node(root: Path) -> Node:
    """``weir node init`` at ``root`` with a node namespace and subnet of its own, no agent."""
    tag, octet = new_tag()
    name = f"wra{tag}"
    sh("ip", "netns", "add", name)
    node = Node(root=root, netns=name, subnet=f"10.213.{octet}.0/24", workdir=root.parent)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        node.weir("node", "init", "--root", str(root), "--node-netns", f"{NETNS_DIR}/{name}",
                  "--subnet", node.subnet, "--backoff", str(BACKOFF), check=True)
    except BaseException:
        node.close()
        raise
    return node


def chain(node: Node) -> list[str]:
    """The plugin types of the node's conflist, in order."""
    doc = json.loads(Path(load_node(str(node.root)).conflist).read_text())
    return [str(p.get("type")) for p in doc["plugins"]]


def plugin_binary(node: Node) -> Path:
    return Path(load_node(str(node.root)).bin_dir) / PLUGIN


# ---- the agent process ------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports of 127.0.0.1 that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text exposition as {(name, labels): value} (label values here hold no commas)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, value = line.rsplit(" ", 1)
        name, _, rest = sample.partition("{")
        labels = frozenset(tuple(kv.split("=", 1)) for kv in rest.rstrip("}").split(",") if kv)
        out[(name, frozenset((k, v.strip('"')) for k, v in labels))] = float(value)
    return out


def repaired(kind: str, result: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return "istio_cni_repair_pods_repaired_total", frozenset({("type", kind), ("result", result)})


INSTALL_READY = ("istio_cni_install_ready", frozenset[tuple[str, str]]())


class AgentProcess:
    """``python -m weir node-agent run --node-root ROOT`` for one repair mode, as a real process
    (its own session), health and metrics on free ports of 127.0.0.1, output in ``log``."""

    def __init__(self, node: Node, mode: str, log: Path) -> None:
        self.node = node
        self.mode = mode
        self.log = log
        self.readiness_port, self.monitoring_port = free_ports(2)
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.killed = False
        self._out: IO[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN)}
        return {**env, **MODES[self.mode], "REPAIR_POLL_INTERVAL": POLL_INTERVAL}

    def start(self) -> None:
        self._out = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weir", "node-agent", "run", "--node-root", str(self.node.root),
             "--listen-address", "127.0.0.1", "--readiness-port", str(self.readiness_port),
             "--monitoring-port", str(self.monitoring_port)],
            env=self.env(), stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True)

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def check_running(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise AssertionError(f"the agent ({self.mode}) exited {code}:\n{self.tail()}")

    def get(self, port: int, path: str) -> tuple[int, str] | None:
        """(status, body) of ``GET http://127.0.0.1:port/path``; None while nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return None

    def ready(self) -> bool:
        self.check_running()
        answer = self.get(self.readiness_port, "/readyz")
        return answer is not None and answer[0] == 200

    def wait_ready(self, timeout: float = READY_WAIT) -> None:
        self.wait(f"the agent ({self.mode}) to answer /readyz 200", self.ready, timeout)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        answer = self.get(self.monitoring_port, "/metrics")
        assert answer is not None, "/metrics does not answer"
        assert answer[0] == 200, f"/metrics: {answer!r}"
        return parse_metrics(answer[1])

    def wait(self, what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
        try:
            return wait_for(what, fn, timeout, interval)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe agent's log:\n{self.tail()}") from None

    def stop(self, timeout: float = STOP_WAIT) -> int | None:
        """SIGTERM, wait; SIGKILL by pid if it does not exit in time. Its exit code (kept)."""
        if self.proc is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.returncode = self.proc.wait(10)
        if self._out is not None:
            self._out.close()
            self._out = None
        return self.returncode


# ---- the pods ---------------------------------------------------------------------------------


def captured(record: PodRecord) -> bool:
    """ISTIO rules in the pod's recorded network namespace (False while it has none)."""
    ns = NetNS(record.netns)
    try:
        return bool(record.netns) and ns.exists() and has_istio_rules(ns)
    except (RuntimeError, OSError):
        return False


def statuses(node: Node) -> str:
    lines = []
    for name in PODS:
        r = node.store().get(NAMESPACE, name)
        lines.append(f"{name}: " + ("gone" if r is None else
                                    f"uid {r.uid} {r.phase} labels {r.manifest['metadata'].get('labels')} "
                                    f"validation {json.dumps(validation(r))}"))
    return "\n".join(lines)


# ---- the test ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_real_agent_fixes_pods_that_raced_it(workdir: Path, mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    node = make_node(workdir / "node")
    agents: list[AgentProcess] = []
    forced: list[str] = []
    try:
        # 1: the agent installs weir-cni, then SIGTERM takes it out again: the start-up race.
        first = AgentProcess(node, mode, node.workdir / "agent-1.log")
        agents.append(first)
        first.start()
        first.wait_ready()
        assert chain(node) == ["bridge", "portmap", PLUGIN], first.tail()
        assert plugin_binary(node).is_file()
        assert first.stop() == 0, f"the agent exited {first.returncode}:\n{first.tail()}"
        assert not first.killed
        assert chain(node) == ["bridge", "portmap"], "weir-cni is out of the conflist"
        assert not plugin_binary(node).exists(), "weir-cni is out of the bin dir"

        # 2: pods start without weir-cni: not captured, istio-validation exits 126.
        before = start_uncaptured(node, NAMESPACE, PODS, RACE_WAIT)

        # 3: the agent again: timed from its start to every pod's outcome.
        second = AgentProcess(node, mode, node.workdir / "agent-2.log")
        agents.append(second)
        started = time.monotonic()
        second.start()

        def outcome() -> list[PodRecord] | None:
            second.check_running()
            if mode == "repair":
                ok = lambda r: r.uid == before[r.name] and completed_and_running(r) and captured(r)  # noqa: E731
            elif mode == "delete":
                ok = lambda r: r.uid != before[r.name] and completed_and_running(r) and captured(r)  # noqa: E731
            else:
                ok = labelled_uninitialized
            return every_pod(node, NAMESPACE, PODS, ok)

        try:
            done = second.wait(f"every pod {DONE[mode]}", outcome, BOUND, 0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\npods:\n{statuses(node)}") from None
        elapsed = time.monotonic() - started
        second.wait_ready()

        if mode == "repair":
            assert {r.name: r.uid for r in done} == before, "the same pods, repaired in place"
        elif mode == "delete":
            assert all(validation(r)["restartCount"] == 0 for r in done), "the new pods pass at once"
            assert {netns_name(uid) for uid in before.values()} & netns_names() == set(), "old sandboxes gone"
        else:
            assert {r.name: r.uid for r in done} == before
            assert not any(captured(r) for r in done), "labelling programs nothing"
        for record in done:
            events = [(e["type"], e["reason"]) for e in node.store().events(record.uid)]
            assert ("Warning", REASONS[mode]) in events, events

        wanted = {repaired(mode, "success"): 3.0, INSTALL_READY: 1.0}

        def counted() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            m = second.metrics()
            return m if all(m.get(k) == v for k, v in wanted.items()) else None

        scraped = second.wait("the repair count and install readiness in /metrics", counted, METRICS_WAIT, 0.2)
        for kind in MODES:
            for result in ("success", "fail", "skip"):
                expected = 3.0 if (kind, result) == (mode, "success") else 0.0
                assert scraped[repaired(kind, result)] == expected, (kind, result, second.tail())
        assert scraped[INSTALL_READY] == 1.0
        to_ready = scraped[("weir_cni_agent_start_to_ready_seconds", frozenset())]
        with capsys.disabled():
            print(f"\nrace-agent/{mode}: {len(PODS)} pods fixed {elapsed:.1f}s after the agent process started "
                  f"(its start-to-ready: {to_ready:.2f}s)")
        assert chain(node) == ["bridge", "portmap", PLUGIN]
        assert plugin_binary(node).is_file()
    finally:
        try:
            for agent in agents:  # each one, even if another would not die
                with contextlib.suppress(subprocess.TimeoutExpired):
                    agent.stop()
        finally:
            forced = node.close()
    assert [(a.returncode, a.killed) for a in agents] == [(0, False)] * len(agents), agents[-1].tail()
    assert chain(node) == ["bridge", "portmap"], "the last agent took weir-cni out again"
    assert not plugin_binary(node).exists()
    assert forced == [], f"cleaned up by force: {forced}"
    assert {netns_name(uid) for uid in node.uids} & netns_names() == set(), "pod namespaces left"
    assert node.netns not in netns_names(), "the node namespace is gone"
    assert shim_pids(node.db) == [], "shims left"
