"""Container probes in the embedded runtime, end to end: ``weir pod run`` of pods whose containers
have startup, readiness and liveness probes (httpGet, tcpSocket, exec, grpc), run by the pod's
shim inside the pod's network namespace against real servers in the pod.

What Kubernetes promises and the mesh relies on: a native sidecar's startup probe holds back
the init containers and containers after it; ``ready`` and the pod's Ready condition follow the
readiness probe; a failed liveness or startup probe kills the container (SIGKILL after the
probe's grace period) and its restartPolicy restarts it; kubelet's events say what happened.
Probe periods are 1 s and thresholds small, so each test takes seconds.
"""

from __future__ import annotations

import calendar
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .runtime_helpers import (
    Node,
    container,
    make_node,
    netns_name,
    netns_names,
    pod,
    shim_pids,
    sleeper,
    wait_for,
)

pytestmark = [
    pytest.mark.cni_plugins,
    pytest.mark.timeout(120),
]

# A tiny HTTP server for the pods: after --delay seconds it listens on 127.0.0.1:--port and
# answers any GET with 200 while --flag exists (or always, without --flag), 500 otherwise.
PROBE_SERVER = '''
import argparse, http.server, os, time
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--delay", type=float, default=0)
parser.add_argument("--flag", default="")
args = parser.parse_args()
time.sleep(args.delay)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = not args.flag or os.path.exists(args.flag)
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
'''

# A gRPC server with grpc.health.v1.Health/Check answering SERVING (messages as raw bytes).
GRPC_SERVER = '''
import sys, time
from concurrent import futures
import grpc
def check(request, context):
    return b"\\x08\\x01"
server = grpc.server(futures.ThreadPoolExecutor(2))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)}),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
server.wait_for_termination()
'''


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A node; at the end every pod is removed and nothing may have needed cleaning up by force."""
    made = make_node(tmp_path / "node")
    forced: list[str] = []
    try:
        yield made
    finally:
        forced = made.close()
    assert forced == [], f"the runtime left these behind (cleaned up by force): {forced}"
    assert not {netns_name(uid) for uid in made.uids} & netns_names()
    assert shim_pids(made.db) == []


# ---- small helpers ------------------------------------------------------------------------------------


def script(node: Node, name: str, text: str) -> str:
    path = node.workdir / name
    path.write_text(text)
    return str(path)


def server(node: Node, name: str, port: int, *, delay: float = 0, flag: Path | None = None,
           **extra: Any) -> dict[str, Any]:
    argv = [script(node, "probe_server.py", PROBE_SERVER), "--port", str(port), "--delay", str(delay)]
    if flag is not None:
        argv += ["--flag", str(flag)]
    return container(name, sys.executable, *argv, **extra)


def http_probe(port: int | str, path: str = "/", **fields: Any) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": 1, **fields}


def entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    for key in ("initContainerStatuses", "containerStatuses"):
        for e in status.get(key, []):
            if e["name"] == name:
                return dict(e)
    raise AssertionError(f"no status for container {name!r}: {status}")


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(dict(c) for c in status.get("conditions", []) if c["type"] == kind)


def ready(status: dict[str, Any]) -> bool:
    return condition(status, "Ready")["status"] == "True"


def events(node: Node, name: str, reason: str | None = None) -> list[str]:
    record = node.record(name)
    return [e["message"] for e in node.store().events(record.uid) if reason is None or e["reason"] == reason]


def event_with(node: Node, name: str, reason: str, text: str) -> str:
    """The first event of the pod with ``reason`` whose message contains ``text`` (waits for it)."""
    return wait_for(f"pod {name}: a {reason} event with {text!r}",
                    lambda: next((m for m in events(node, name, reason) if text in m), None))


def seconds(iso: str) -> float:
    return float(calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ")))


# ---- the sidecar's startup probe gates the pod --------------------------------------------------------


def test_a_sidecar_startup_probe_holds_back_what_follows_it(node: Node) -> None:
    """Istio's injected shape: istio-proxy is a native sidecar whose startup probe polls
    /healthz/ready on :15021 every second; the app must not start before it passes."""
    proxy = server(node, "istio-proxy", 15021, delay=3, restartPolicy="Always",
                   startupProbe=http_probe(15021, "/healthz/ready", timeoutSeconds=3, failureThreshold=600),
                   readinessProbe=http_probe(15021, "/healthz/ready", timeoutSeconds=3, failureThreshold=4))
    after = container("after", "sh", "-c", "echo after the proxy")
    node.run(pod("meshed", [sleeper("app")], init=[proxy, after]))

    waiting = node.wait_status("meshed", "the proxy running, not started", lambda s: "running" in entry(
        s, "istio-proxy")["state"])
    assert entry(waiting, "istio-proxy")["started"] is False
    assert entry(waiting, "after")["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert entry(waiting, "app")["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert waiting["phase"] == "Pending"
    assert condition(waiting, "Initialized")["status"] == "False"
    assert condition(waiting, "Initialized")["reason"] == "ContainersNotInitialized"
    row = node.ls()["meshed"]
    assert (row["READY"], row["STATUS"]) == ("0/2", "Init:0/2")
    refused = event_with(node, "meshed", "Unhealthy", "Startup probe failed: ")
    assert refused == ('Startup probe failed: Get "http://127.0.0.1:15021/healthz/ready": dial tcp '
                       "127.0.0.1:15021: connect: connection refused")

    status = node.wait_status("meshed", "Ready", lambda s: s["phase"] == "Running" and ready(s))
    proxy_status, after_status = entry(status, "istio-proxy"), entry(status, "after")
    assert (proxy_status["started"], proxy_status["ready"]) == (True, True)
    assert after_status["state"]["terminated"]["exitCode"] == 0
    proxy_start = seconds(proxy_status["state"]["running"]["startedAt"])
    assert seconds(after_status["state"]["terminated"]["startedAt"]) - proxy_start >= 2, \
        "the next init container waited for the startup probe (the proxy listens after 3 s)"
    assert seconds(entry(status, "app")["state"]["running"]["startedAt"]) - proxy_start >= 2
    assert entry(status, "istio-proxy")["restartCount"] == 0, "failing startup probes below the threshold"
    assert condition(status, "Initialized")["status"] == "True"
    row = node.ls()["meshed"]
    assert (row["READY"], row["STATUS"]) == ("2/2", "Running")


# ---- readiness ------------------------------------------------------------------------------------------


def test_readiness_follows_the_http_answer(node: Node) -> None:
    flag = node.workdir / "web-ready"
    web = server(node, "web", 8080, flag=flag, ports=[{"name": "http", "containerPort": 8080}],
                 readinessProbe=http_probe("http", "/ready", failureThreshold=1))
    node.run(pod("flip", [web, sleeper("plain")]))

    failed = event_with(node, "flip", "Unhealthy", "statuscode")
    assert failed == "Readiness probe failed: HTTP probe failed with statuscode: 500"
    status = node.status_of("flip")
    assert (entry(status, "web")["started"], entry(status, "web")["ready"]) == (True, False)
    assert entry(status, "plain")["ready"] is True, "no readiness probe: ready once running"
    assert condition(status, "Ready") | {"lastTransitionTime": ""} == {
        "type": "Ready", "status": "False", "reason": "ContainersNotReady",
        "message": "containers with unready status: [web]", "lastTransitionTime": ""}
    assert status["phase"] == "Running"
    assert node.ls()["flip"]["READY"] == "1/2"

    flag.touch()
    status = node.wait_status("flip", "Ready", ready)
    assert entry(status, "web")["ready"] is True
    assert condition(status, "ContainersReady")["status"] == "True"
    assert node.ls()["flip"]["READY"] == "2/2"

    flag.unlink()
    status = node.wait_status("flip", "not Ready again", lambda s: not ready(s))
    assert entry(status, "web")["ready"] is False
    assert entry(status, "web")["restartCount"] == 0, "readiness never restarts a container"
    assert "running" in entry(status, "web")["state"]


# ---- liveness and startup failures kill and restart ----------------------------------------------------


def test_failed_liveness_and_startup_probes_kill_and_restart(node: Node) -> None:
    stubborn = container("app", "sh", "-c", "trap '' TERM; echo run; sleep 1000",  # ignores SIGTERM
                         livenessProbe={"tcpSocket": {"port": 9}, "initialDelaySeconds": 1, "periodSeconds": 1,
                                        "failureThreshold": 2, "terminationGracePeriodSeconds": 1})
    node.run(pod("stubborn", [stubborn], terminationGracePeriodSeconds=5))
    slow = container("app", "sleep", "1000", startupProbe={"exec": {"command": ["false"]}, "periodSeconds": 1,
                                                           "failureThreshold": 2})
    node.run(pod("slow", [slow]))
    never = container("app", "sleep", "1000", livenessProbe={"exec": {"command": ["sh", "-c", "echo dead; exit 1"]},
                                                             "periodSeconds": 1, "failureThreshold": 1})
    node.run(pod("never", [never], restart="Never"))

    status = node.wait_status("stubborn", "restarted", lambda s: entry(s, "app")["restartCount"] >= 1
                              and "running" in entry(s, "app")["state"])
    last = entry(status, "app")["lastState"]["terminated"]
    assert (last["exitCode"], last.get("signal")) == (137, 9), "SIGKILL after the probe's grace period"
    assert seconds(last["finishedAt"]) - seconds(last["startedAt"]) < 10
    assert events(node, "stubborn", "Killing")[0] == "Container app failed liveness probe, will be restarted"
    assert "Liveness probe failed: dial tcp 127.0.0.1:9: connect: connection refused" in events(
        node, "stubborn", "Unhealthy")
    finished = seconds(last["finishedAt"])  # whole seconds
    kill_time = max(e["time"] for e in node.store().events(node.record("stubborn").uid)
                    if e["reason"] == "Killing" and e["time"] < finished + 1)  # the kill that ended this run
    assert finished - kill_time < 3, "the probe's grace (1 s), not the pod's (5 s)"
    assert node.pod_cli("logs", "stubborn", "-p", check=True).stdout == "run\n"

    status = node.wait_status("slow", "restarted", lambda s: entry(s, "app")["restartCount"] >= 1)
    assert entry(status, "app")["lastState"]["terminated"]["exitCode"] == 143, "sleep ends on SIGTERM"
    assert events(node, "slow", "Killing")[0] == "Container app failed startup probe, will be restarted"
    assert events(node, "slow", "Unhealthy")[0] == "Startup probe failed: exit code 1"
    assert entry(node.status_of("slow"), "app")["started"] is False, "its startup probe never passes"

    status = node.wait_status("never", "Failed", lambda s: s["phase"] == "Failed")
    assert entry(status, "app")["restartCount"] == 0
    assert entry(status, "app")["state"]["terminated"]["exitCode"] == 143
    assert events(node, "never", "Killing") == ["Container app failed liveness probe"]
    assert events(node, "never", "Unhealthy") == ["Liveness probe failed: dead"]
    assert condition(status, "Ready")["reason"] == "PodFailed"


# ---- tcpSocket, exec and grpc handlers -----------------------------------------------------------------


def test_tcp_exec_and_grpc_probes(node: Node) -> None:
    tcp = server(node, "tcp", 8081, delay=2, ports=[{"name": "web", "containerPort": 8081}],
                 readinessProbe={"tcpSocket": {"port": "web"}, "periodSeconds": 1})
    # The exec probe runs as the container's user, with its environment, in the pod's namespace.
    check = 'test "$(id -u):$(id -g)" = 2345:3456 && test "$GREETING" = hello && ' \
            'ip -4 -o addr show eth0 | grep -q "inet $POD_IP/"'
    execok = container("execok", "sleep", "1000", user=2345, group=3456,
                       env=[{"name": "GREETING", "value": "hello"},
                            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                       readinessProbe={"exec": {"command": ["sh", "-c", check]}, "periodSeconds": 1})
    execfail = container("execfail", "sleep", "1000",
                         readinessProbe={"exec": {"command": ["sh", "-c", "echo not ready; exit 1"]},
                                         "periodSeconds": 1})
    grpc = container("grpc", sys.executable, script(node, "grpc_server.py", GRPC_SERVER), "9090",
                     readinessProbe={"grpc": {"port": 9090}, "periodSeconds": 1, "timeoutSeconds": 2})
    node.run(pod("kinds", [tcp, execok, execfail, grpc]))

    def readies(status: dict[str, Any]) -> dict[str, bool]:
        return {c["name"]: bool(c.get("ready")) for c in status["containerStatuses"]}

    early = node.wait_status("kinds", "all running", lambda s: all("running" in c["state"]
                                                                   for c in s["containerStatuses"]))
    assert readies(early)["tcp"] is False, "the server listens after 2 s"
    status = node.wait_status("kinds", "tcp, execok and grpc ready", lambda s: readies(s) == {
        "tcp": True, "execok": True, "execfail": False, "grpc": True})
    assert not ready(status)
    assert condition(status, "Ready")["message"] == "containers with unready status: [execfail]"
    assert "Readiness probe failed: not ready" in events(node, "kinds", "Unhealthy")
    assert node.ls()["kinds"]["READY"] == "3/4"
    assert all(c["restartCount"] == 0 for c in status["containerStatuses"])


def test_probe_fields_are_checked_before_anything_runs(node: Node) -> None:
    bad = container("app", "sleep", "1000", readinessProbe={"httpGet": {"port": "http"}})
    done = node.run(pod("bad", [bad]), check=False)
    assert done.returncode != 0
    assert done.stderr.strip().endswith("spec.containers[0].readinessProbe.httpGet.port: no port named \"http\" in "
                                        "this container's ports (named ports: none)"), done.stderr
    assert node.store().get("default", "bad") is None

