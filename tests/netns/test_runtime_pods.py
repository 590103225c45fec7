"""The embedded pod runtime end to end: ``weir node init``, ``weir pod run/ls/get/logs/exec/rm``
as real processes, per-pod shims running real container processes, the real CNI chain
(loopback, bridge + host-local + portmap from /usr/lib/cni, weir-cni chained last) and the
real node agent reading the runtime's store, programming capture rules into pod namespaces.

Per test: a root under ``tmp_path``, a node namespace of its own (the plugins run there, so
nothing reaches the host's links or netfilter rules), a unique subnet, the agent on a
background event loop. At the end every pod is removed with ``Runtime.remove`` and the test
fails if a shim, a pod process or a pod namespace had to be cleaned up by force.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from weir.netns import NetNS
from weir.runtime.shim import processes_in

from .cni_helpers import has_istio_rules, in_ns, istio_rules
from .runtime_helpers import (
    Node,
    alive,
    container,
    injected,
    make_node,
    netns_name,
    netns_names,
    new_uid,
    pod,
    shim_pids,
    sleeper,
    wait_for,
)

pytestmark = [
    pytest.mark.cni_plugins,
    pytest.mark.timeout(90),
]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Make nodes (``nodes(agent=..., fail_open=...)``); all are cleaned up and checked at the end."""
    made: list[Node] = []

    def make(*, root: Path | None = None, **kwargs: Any) -> Node:
        made.append(make_node(root or tmp_path / f"node{len(made)}", **kwargs))
        return made[-1]

    forced: list[str] = []
    try:
        yield make
    finally:
        for node in made:
            try:
                forced += node.close()
            except Exception as exc:  # close the other nodes all the same
                forced.append(f"closing the node at {node.root} failed: {exc!r}")
    left_netns = sorted({netns_name(uid) for node in made for uid in node.uids} & netns_names())
    left_shims = [pid for node in made for pid in shim_pids(node.db)]
    assert forced == [], f"the runtime left these behind (cleaned up by force): {forced}"
    assert left_netns == [], f"pod namespaces left: {left_netns}"
    assert left_shims == [], f"shims left: {left_shims}"


@pytest.fixture
def node(nodes: Callable[..., Node]) -> Node:
    return nodes()


# ---- small checks -----------------------------------------------------------------------------


def entry(status: dict[str, Any], name: str) -> dict[str, Any]:
    for key in ("initContainerStatuses", "containerStatuses"):
        for e in status.get(key, []):
            if e["name"] == name:
                return dict(e)
    raise AssertionError(f"no status for container {name!r}: {status}")


def running(status: dict[str, Any], *names: str) -> bool:
    return all("running" in entry(status, n)["state"] for n in names)


def all_running(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Running" and all(
        "running" in c["state"] and c.get("ready") for c in status.get("containerStatuses", []))


def terminated(status: dict[str, Any], name: str, key: str = "state") -> dict[str, Any]:
    return dict(entry(status, name)[key].get("terminated") or {})


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


def snapshot(node: Node) -> dict[str, Any]:
    """What a pod run leaves on the node."""
    return {"pods": [(r.namespace, r.name, r.uid) for r in node.store().pods()], "leases": node.leases(),
            "cache": node.cache_entries(), "attachments": node.attachments(),
            "capture": node.capture_records()}


def assert_created_nothing(node: Node, before: dict[str, Any], uid: str | None) -> None:
    assert snapshot(node) == before
    if uid is not None:
        assert netns_name(uid) not in netns_names(), f"{netns_name(uid)} was created and left"


def veths(node: Node) -> list[str]:
    out = in_ns(NetNS(f"/var/run/netns/{node.netns}"), "ip", "-j", "link", "show")
    return [link["ifname"] for link in json.loads(out.stdout) if link["ifname"].startswith("veth")]


def process_ids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a process."""
    ids = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid"):
                ids[key] = int(value.split()[0])
    return ids["Uid"], ids["Gid"]


# ---- 1: capture of injected pods --------------------------------------------------------------


def test_injected_pod_is_captured_and_a_plain_pod_is_not(node: Node) -> None:
    node.run(injected("hello", "shop"))
    node.run(pod("plain", [sleeper("app")], namespace="shop"))

    hello = node.wait_status("hello", "Running", all_running, namespace="shop")
    plain = node.wait_status("plain", "Running", all_running, namespace="shop")

    record = node.record("hello", "shop")
    rules = istio_rules(NetNS(record.netns))  # whichever back-end the agent detected
    assert any(line.startswith("-A ISTIO_") for lines in rules.values() for line in lines) or rules["nft"], rules
    validation = entry(hello, "istio-validation")
    assert validation["state"]["terminated"]["exitCode"] == 0
    assert validation["state"]["terminated"]["reason"] == "Completed"
    assert validation["restartCount"] == 0
    assert running(hello, "app", "istio-proxy")
    assert node.in_subnet(hello["podIP"])
    assert hello["podIPs"] == [{"ip": hello["podIP"]}]
    logs = node.pod_cli("logs", "hello", "-n", "shop", "-c", "istio-validation", check=True).stdout
    assert "validation passed" in logs, logs
    attachment = json.loads((node.attachments_dir / f"{record.sandbox_id}_eth0.json").read_text())
    assert attachment["captured"] is True

    plain_record = node.record("plain", "shop")
    assert not has_istio_rules(NetNS(plain_record.netns)), istio_rules(NetNS(plain_record.netns))
    assert node.in_subnet(plain["podIP"])
    assert plain["podIP"] != hello["podIP"]
    attachment = json.loads((node.attachments_dir / f"{plain_record.sandbox_id}_eth0.json").read_text())
    assert attachment["captured"] is False

    rows = node.ls()
    assert rows["hello"] | {"AGE": ""} == {"NAMESPACE": "shop", "NAME": "hello", "READY": "2/2", "STATUS": "Running",
                                           "RESTARTS": "0", "IP": hello["podIP"], "AGE": ""}
    assert (rows["plain"]["READY"], rows["plain"]["STATUS"], rows["plain"]["IP"]) == ("1/1", "Running",
                                                                                      plain["podIP"])


# ---- 2: the container processes -----------------------------------------------------------------


def test_containers_run_in_the_pod_netns_as_their_user_with_command_args_and_env(node: Node) -> None:
    script = 'echo "uid=$(id -u) gid=$(id -g) argv0=$0 arg1=$1 arg2=$2"; env | sort; ip -4 -o addr show; ' \
             "echo END; exec sleep 1000"
    printer = container(
        "printer", "sh", "-c", user=2345, group=3456, args=[script, "zero", "first", "second word"],
        env=[{"name": "GREETING", "value": "hello world"},
             {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
             {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
             {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
             {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}}],
        workingDir="/tmp")
    inherit = container("inherit", "sh", "-c", 'echo "uid=$(id -u) gid=$(id -g) pwd=$(pwd)"; exec sleep 1000')
    manifest = pod("envy", [printer, inherit], namespace="apps",
                   securityContext={"runAsUser": 4321, "runAsGroup": 4322})
    manifest["metadata"]["labels"] = {"tier": "backend"}
    node.run(manifest)

    status = node.wait_status("envy", "Running", all_running, namespace="apps")
    ip = status["podIP"]

    def printed() -> str | None:
        text = node.pod_cli("logs", "envy", "-n", "apps", check=True).stdout
        return text if "END" in text else None

    out = wait_for("the printer's output", printed)
    lines = out.splitlines()
    assert lines[0] == "uid=2345 gid=3456 argv0=zero arg1=first arg2=second word"
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line and not line[0].isdigit())
    assert env["GREETING"] == "hello world"
    assert env["POD_NAME"] == "envy"
    assert env["POD_NAMESPACE"] == "apps"
    assert env["POD_IP"] == ip
    assert env["TIER"] == "backend"
    assert env["PWD"] == "/tmp"
    assert env["HOSTNAME"] == "envy"
    assert "PYTEST_CURRENT_TEST" not in env, "the container's env is its own, not the runtime's"
    addrs = [line.split()[1:4] for line in lines if line[:1].isdigit()]
    assert ["lo", "inet", "127.0.0.1/8"] in addrs
    assert ["eth0", "inet", f"{ip}/{ipaddress.ip_network(node.subnet).prefixlen}"] in addrs
    assert len(addrs) == 2, f"only the pod's interfaces are visible: {addrs}"

    inherited = wait_for("the inherit container's output", lambda: node.pod_cli(
        "logs", "envy", "-n", "apps", "-c", "inherit", check=True).stdout)
    assert inherited.strip() == "uid=4321 gid=4322 pwd=/", "the pod's securityContext applies; workingDir /"

    record = node.record("envy", "apps")
    owners = {process_ids(pid) for pid in processes_in(NetNS(record.netns), exclude={record.shim_pid})}
    assert owners == {(2345, 3456), (4321, 4322)}, "only the containers run in the pod, each as its user"


# ---- 3: restartPolicy and crash-loop back-off -----------------------------------------------------


def test_restart_policies_crash_loop_back_off_and_init_containers(node: Node) -> None:
    flag = node.workdir / "init-ran-once"
    node.run(pod("crash", [container("app", "sh", "-c", "echo crash run; exit 3")]))
    node.run(pod("onfailure", [container("app", "sh", "-c", "echo done; exit 0")], restart="OnFailure"))
    node.run(pod("never", [container("app", "sh", "-c", "echo failing; exit 1")], restart="Never"))
    node.run(pod("initfail", [container("app", "sh", "-c", "echo main started; sleep 1000")], restart="Never",
                 init=[container("init", "sh", "-c", "echo init failing; exit 5")]))
    once = f"if [ -e {flag} ]; then echo second run; exit 0; fi; touch {flag}; echo first run; exit 126"
    node.run(pod("flaky", [sleeper("app")], init=[container("init", "sh", "-c", once)]))

    # Always + exit 3: restarted with growing back-off, CrashLoopBackOff in between.
    crash = node.wait_status("crash", "two restarts, in back-off", lambda s: entry(s, "app")["restartCount"] >= 2
                             and entry(s, "app")["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff")
    app = entry(crash, "app")
    assert crash["phase"] == "Running"
    assert app["lastState"]["terminated"]["exitCode"] == 3
    assert app["lastState"]["terminated"]["reason"] == "Error"
    assert "back-off" in app["state"]["waiting"]["message"]
    seen = app["restartCount"]
    node.wait_status("crash", "the restart count growing", lambda s: entry(s, "app")["restartCount"] > seen)
    previous = node.pod_cli("logs", "crash", "-p", check=True).stdout
    assert previous == "crash run\n"

    # OnFailure + exit 0: done, no restart.
    done = node.wait_status("onfailure", "Succeeded", lambda s: s["phase"] == "Succeeded")
    assert terminated(done, "app")["exitCode"] == 0
    assert entry(done, "app")["restartCount"] == 0

    # Never + exit 1: Failed.
    failed = node.wait_status("never", "Failed", lambda s: s["phase"] == "Failed")
    assert terminated(failed, "app")["exitCode"] == 1
    assert entry(failed, "app")["restartCount"] == 0

    # Never + a failing init container: Failed, and the containers never start.
    initfail = node.wait_status("initfail", "Failed", lambda s: s["phase"] == "Failed")
    assert terminated(initfail, "init")["exitCode"] == 5
    assert entry(initfail, "init")["restartCount"] == 0
    assert entry(initfail, "app")["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert entry(initfail, "app")["restartCount"] == 0
    assert node.pod_cli("logs", "initfail", check=True).stdout == ""

    # An init container that fails with 126 once, then succeeds: what Istio's repair controller reads.
    flaky = node.wait_status("flaky", "Running", all_running)
    init = entry(flaky, "init")
    assert init["lastState"]["terminated"]["exitCode"] == 126
    assert init["state"]["terminated"]["exitCode"] == 0
    assert init["state"]["terminated"]["reason"] == "Completed"
    assert init["restartCount"] == 1
    assert node.pod_cli("logs", "flaky", "-c", "init", "-p", check=True).stdout == "first run\n"
    assert node.pod_cli("logs", "flaky", "-c", "init", check=True).stdout == "second run\n"

    rows = node.ls()
    assert rows["crash"]["STATUS"] == "CrashLoopBackOff"
    assert int(rows["crash"]["RESTARTS"]) >= 2
    assert (rows["onfailure"]["READY"], rows["onfailure"]["STATUS"]) == ("0/1", "Completed")
    assert rows["never"]["STATUS"] == "Error"
    assert rows["initfail"]["STATUS"] == "Init:Error"
    assert (rows["flaky"]["READY"], rows["flaky"]["STATUS"], rows["flaky"]["RESTARTS"]) == ("1/1", "Running", "1")
    for name in ("onfailure", "never", "initfail"):  # a finished pod keeps no supervisor
        pid = node.record(name).shim_pid
        wait_for(f"the shim of {name} to exit", lambda pid=pid: not alive(pid))  # type: ignore[misc]
    # ... and listing pods does not start one again
    assert "restarted" not in node.pod_cli("ls", check=True).stderr
    assert node.record("initfail").status["phase"] == "Failed"


# ---- 4: pods survive their supervisor and the runtime ---------------------------------------------


def test_pods_survive_a_killed_shim_and_a_new_runtime(node: Node) -> None:
    node.run(pod("keeper", [container("app", "sh", "-c", "echo started; sleep 1000")]))
    node.run(pod("other", [sleeper("app")], namespace="shop"))
    node.wait_status("keeper", "Running", all_running)
    node.wait_status("other", "Running", all_running, namespace="shop")
    before = node.record("keeper")
    ns = NetNS(before.netns)

    def two() -> list[int] | None:
        pids = processes_in(ns, exclude={before.shim_pid})
        return pids if len(pids) >= 2 else None

    old = wait_for("sh and its sleep in the pod", two)

    os.kill(before.shim_pid, signal.SIGKILL)
    wait_for("the shim to die", lambda: not alive(before.shim_pid))

    listing = node.pod_cli("ls", check=True)
    assert "restarted the supervisor of pod default/keeper" in listing.stderr, listing.stderr
    assert "shop/other" not in listing.stderr
    status = node.wait_status("keeper", "running again after one restart", lambda s: all_running(s)
                              and entry(s, "app")["restartCount"] == 1)
    after = node.record("keeper")
    last = entry(status, "app")["lastState"]["terminated"]
    assert last["exitCode"] == 137
    assert (after.uid, after.netns, after.sandbox_id) == (before.uid, before.netns, before.sandbox_id)
    assert status["podIP"] == before.status["podIP"]
    assert after.shim_pid != before.shim_pid
    assert alive(after.shim_pid)
    wait_for("the old container processes to be gone", lambda: not any(alive(pid) for pid in old))
    assert node.pod_cli("logs", "keeper", check=True).stdout == "started\n"
    assert node.pod_cli("logs", "keeper", "-p", check=True).stdout == "started\n"
    assert node.ls()["keeper"]["RESTARTS"] == "1"
    assert "restarted" not in node.pod_cli("ls", check=True).stderr, "only a lost supervisor is restarted"

    # A brand-new Runtime on the same root: the same pods, the same IPs, nothing to restart.
    runtime = node.runtime()
    assert {(r.namespace, r.name): r.status["podIP"] for r in runtime.pods()} == {
        ("default", "keeper"): before.status["podIP"],
        ("shop", "other"): node.record("other", "shop").status["podIP"]}
    assert runtime.reconcile() == []
    assert runtime.get("default", "keeper").netns == before.netns


# ---- 5: exec and rm -------------------------------------------------------------------------------


def test_exec_runs_as_the_container_and_rm_removes_everything(node: Node) -> None:
    node.run(pod("tools", [sleeper("app", 2000), sleeper("side", 3000)], namespace="shop",
                 annotations={"note": "plain"}))
    status = node.wait_status("tools", "Running", all_running, namespace="shop")
    ip = status["podIP"]

    done = node.pod_cli("exec", "tools", "-n", "shop", "--", "sh", "-c", "id -u; id -g; exit 7")
    assert (done.returncode, done.stdout) == (7, "2000\n2000\n"), done.stderr
    done = node.pod_cli("exec", "tools", "-n", "shop", "-c", "side", "--", "id", "-u")
    assert (done.returncode, done.stdout) == (0, "3000\n"), done.stderr
    done = node.pod_cli("exec", "tools", "-n", "shop", "--", "ip", "-4", "-o", "addr", "show", "eth0")
    assert done.returncode == 0, done.stderr
    assert f" {ip}/" in done.stdout, done.stdout

    record = node.record("tools", "shop")
    sandbox = record.sandbox_id
    assert os.path.exists(record.netns)
    assert node.leases() == [ip]
    assert node.cache_entries() == sorted([f"weir-{sandbox}-eth0", f"cni-loopback-{sandbox}-lo"])
    assert node.attachments() == [f"{sandbox}_eth0"]
    pids = processes_in(NetNS(record.netns))
    assert pids

    done = node.pod_cli("rm", "tools", "-n", "shop")
    assert done.returncode == 0, done.stderr
    assert "deleted" in done.stdout
    assert not os.path.exists(record.netns)
    assert netns_name(record.uid) not in netns_names()
    assert node.leases() == []
    assert node.cache_entries() == []
    assert node.store().get("shop", "tools") is None
    assert node.attachments() == []
    assert not alive(record.shim_pid)
    assert not any(alive(pid) for pid in pids)
    assert not shim_pids(node.db)

    again = node.pod_cli("rm", "tools", "-n", "shop")
    assert again.returncode == 1
    assert "not found" in one_line(again.stderr)


# ---- 6: bad input ---------------------------------------------------------------------------------


def test_bad_input_is_refused_in_one_line_and_creates_nothing(node: Node) -> None:
    uid = new_uid()
    unknown = pod("bad", [{"name": "app", "comand": ["sleep", "1"]}], uid=uid)
    duplicate = pod("bad", [sleeper("app"), sleeper("app")], uid=uid)
    no_command = pod("bad", [{"name": "app", "image": "example/app"}], uid=uid)
    cases: list[tuple[str, dict[str, Any] | str, list[str]]] = [
        ("unknown field", unknown, ["spec.containers[0].comand", "unknown field", '"command"']),
        ("duplicate container names", duplicate, ["spec.containers[1].name", "duplicate container name"]),
        ("missing command", no_command, ["spec.containers[0].command", "required"]),
        ("invalid YAML", "apiVersion: v1\nkind: Pod\nmetadata: {name: bad\nspec: [\n", ["invalid YAML"]),
    ]
    before = snapshot(node)
    for what, manifest, words in cases:
        path = node.write(manifest)
        done = node.pod_cli("run", "-f", str(path))
        assert done.returncode == 2, f"{what}: exit {done.returncode}: {done.stderr}"
        line = one_line(done.stderr)
        for word in words:
            assert word in line, f"{what}: {word!r} not in {line!r}"
        assert str(path) in line, f"{what}: the message names the file: {line!r}"
        assert done.stdout == ""
        assert_created_nothing(node, before, uid)

    # The same pod twice: the second run is refused and the first pod is untouched.
    first = pod("twice", [sleeper("app")])
    path = node.write(first)
    node.pod_cli("run", "-f", str(path), check=True)
    node.uids.add(node.record("twice").uid)
    node.wait_status("twice", "Running", all_running)
    original = node.record("twice")
    before = snapshot(node)
    second_uid = new_uid()
    first_again = dict(first, metadata={**first["metadata"], "uid": second_uid})
    for manifest_path in (path, node.write(first_again)):
        done = node.pod_cli("run", "-f", str(manifest_path))
        assert done.returncode in (1, 2), done
        assert "default/twice already exists" in one_line(done.stderr)
        assert_created_nothing(node, before, second_uid)
    now = node.record("twice")
    assert (now.uid, now.netns, now.sandbox_id, now.shim_pid) == (original.uid, original.netns,
                                                                   original.sandbox_id, original.shim_pid)
    assert now.status["podIP"] == original.status["podIP"]
    assert all_running(now.status)
    assert entry(now.status, "app")["restartCount"] == 0
    assert alive(now.shim_pid)
    assert os.path.exists(now.netns)


# ---- 7: a CNI failure leaves nothing half-created -------------------------------------------------


def test_agent_down_fails_closed_and_leaves_nothing(node: Node) -> None:
    assert node.agent is not None
    node.agent.stop()
    before = snapshot(node)
    for manifest in (injected("hello", "shop", uid=new_uid()), pod("plain", [sleeper("app")], uid=new_uid())):
        meta = manifest["metadata"]
        done = node.run(manifest, check=False)
        assert done.returncode == 1, done
        line = one_line(done.stderr)
        assert f"pod {meta['namespace']}/{meta['name']}: CNI ADD failed" in line
        assert "[11]" in line, line
        assert "agent" in line, line
        assert_created_nothing(node, before, meta["uid"])
        assert veths(node) == [], "no veth is left in the node namespace"
    assert node.pod_cli("ls", check=True).stdout.strip() == "No pods."

    # With the agent back, the same pod starts and is captured.
    node.agent.start()
    node.run(injected("hello", "shop"))
    record = node.record("hello", "shop")
    node.wait_status("hello", "Running", all_running, namespace="shop")
    assert has_istio_rules(NetNS(record.netns))


def test_fail_open_namespace_starts_uncaptured_when_the_agent_is_down(nodes: Callable[..., Node]) -> None:
    node = nodes(agent=False, fail_open="shop")
    done = node.run(injected("hello", "shop"))
    assert "pod/hello created" in done.stdout
    plain = pod("plain", [sleeper("app")], namespace="shop")
    node.run(plain)
    node.wait_status("plain", "Running", all_running, namespace="shop")
    record = node.record("hello", "shop")
    assert os.path.exists(record.netns)
    assert not has_istio_rules(NetNS(record.netns)), istio_rules(NetNS(record.netns))
    assert node.in_subnet(record.status["podIP"])
    assert node.attachments() == []
    # Uncaptured, the istio-validation init container fails (126, as Istio's) and is retried;
    # the containers wait: the shape Istio's repair controller acts on.
    status = node.wait_status("hello", "validation failed once", lambda s: entry(
        s, "istio-validation")["restartCount"] >= 1, namespace="shop")
    assert entry(status, "istio-validation")["lastState"]["terminated"]["exitCode"] == 126
    assert status["phase"] == "Pending"
    assert not running(status, "app")
    assert not running(status, "istio-proxy")

    before = snapshot(node)
    other = injected("hello", "default", uid=new_uid())  # not a fail-open namespace: fails closed
    done = node.run(other, check=False)
    assert done.returncode == 1, done
    assert "[11]" in one_line(done.stderr), done.stderr
    assert_created_nothing(node, before, other["metadata"]["uid"])


# ---- 8: the pod as Kubernetes shows it ------------------------------------------------------------


def test_get_shows_the_manifest_with_uid_and_the_status(node: Node) -> None:
    init_flag, app_flag = node.workdir / "init-once", node.workdir / "app-once"
    manifest = pod(
        "shape",
        [container("app", "sh", "-c", f"if [ ! -e {app_flag} ]; then touch {app_flag}; exit 3; fi; exec sleep 1000")],
        init=[container("init", "sh", "-c", f"if [ ! -e {init_flag} ]; then touch {init_flag}; exit 126; fi")],
        namespace="shop")
    node.run(manifest)
    node.wait_status("shape", "running after one restart", lambda s: all_running(s)
                     and entry(s, "app")["restartCount"] == 1, namespace="shop")

    out = node.pod_cli("get", "shape", "-n", "shop", "-o", "yaml", check=True).stdout
    obj = yaml.safe_load(out)
    assert obj == json.loads(node.pod_cli("get", "shape", "-n", "shop", "-o", "json", check=True).stdout)
    assert (obj["apiVersion"], obj["kind"]) == ("v1", "Pod")
    meta = obj["metadata"]
    assert (meta["name"], meta["namespace"]) == ("shape", "shop")
    assert str(uuid.UUID(meta["uid"])) == meta["uid"] == node.record("shape", "shop").uid
    assert obj["spec"] == manifest["spec"]

    status = obj["status"]
    assert status["phase"] == "Running"
    assert node.in_subnet(status["podIP"])
    assert status["podIPs"] == [{"ip": status["podIP"]}]
    (init,) = status["initContainerStatuses"]
    assert init["name"] == "init"
    assert init["restartCount"] == 1
    assert init["lastState"]["terminated"]["exitCode"] == 126
    assert init["state"]["terminated"]["exitCode"] == 0
    assert init["state"]["terminated"]["reason"] == "Completed"
    (app,) = status["containerStatuses"]
    assert app["name"] == "app"
    assert app["restartCount"] == 1
    assert app["lastState"]["terminated"]["exitCode"] == 3
    assert "running" in app["state"]
    assert app["ready"] is True
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "True",
                          "Ready": "True"}


# ---- the shipped examples ---------------------------------------------------------------------------


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A node root that every uid can traverse, as /var/lib/weir is on a real node (pytest's own
    temporary directories are private to root), so containers can run the node's `weir`."""
    root = Path(tempfile.mkdtemp(prefix="weir-example-"))
    root.chmod(0o755)
    try:
        yield root / "node"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("example", ["hello", "injected"])
def test_the_shipped_examples_run(open_root: Path, nodes: Callable[..., Node], example: str) -> None:
    node = nodes(root=open_root)
    examples = Path(__file__).resolve().parents[2] / "examples" / "pods"
    manifest = yaml.safe_load((examples / f"{example}.yaml").read_text())
    node.run(manifest)
    status = node.wait_status(example, "Running", lambda s: s.get("phase") == "Running")
    assert node.in_subnet(status["podIP"])
    if example == "injected":
        validation = entry(status, "istio-validation")
        assert validation["state"]["terminated"]["exitCode"] == 0
        assert "validation passed" in node.pod_cli("logs", example, "-c", "istio-validation", check=True).stdout
    else:
        out = wait_for("the greeting", lambda: node.pod_cli("logs", example).stdout or None)
        assert out.strip() == f"hello from hello at {status['podIP']}"
