"""weir-cni end to end: the plugin built as its zipapp, chained after the reference bridge +
host-local plugins by the runtime's conflist executor, talking to the real node agent
(CaptureService + PluginEventServer on a background event loop) over its UNIX socket, and
programming capture rules into a real pod namespace.

Per test: a node namespace (the plugins run inside it, so the bridge and veths never reach the
host), a pod namespace, the plugin in ``tmp_path/bin``, the agent's run directory in
``tmp_path/run`` and pod manifests in ``tmp_path/pods``. Spec versions 0.3.0-1.0.0 run through
the chain; 1.1.0 (STATUS, GC) runs weir-cni alone, since the reference plugins stop at 1.0.0.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from weir.nodeagent.service import Settings
from weir.runtime.cni import Attachment, PluginError, version_key

from .cni_helpers import (
    NETWORK,
    PLUGIN,
    POD_NAMESPACE,
    Agent,
    Lab,
    Run,
    build_plugin,
    call_plugin,
    delete_one_istio_rule,
    has_istio_rules,
    istio_rules,
    modules_outside,
    namespace,
    new_tag,
    sh,
    stale_socket,
)

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
NS = POD_NAMESPACE

pytestmark = [
    pytest.mark.cni_plugins,
    pytest.mark.timeout(60),
]


@pytest.fixture
def lab(tmp_path: Path, golden_dir: Path) -> Iterator[Lab]:
    tag, subnet = new_tag()
    build_plugin(tmp_path)
    (tmp_path / "pods").mkdir()
    with namespace(f"wpn{tag}") as node, namespace(f"wpp{tag}") as pod:
        agent = Agent(tmp_path / "pods", tmp_path / "run", Settings(pod_lookup_attempts=2, pod_lookup_interval=0.05))
        try:
            agent.start()
            yield Lab(node, pod, f"wpp{tag}", f"wpb{tag}", subnet, tmp_path, golden_dir, agent)
        finally:
            agent.close()


def assert_nothing_left(lab: Lab) -> None:
    """What a failed or deleted attachment must leave behind: nothing."""
    assert lab.leases() == []
    assert lab.cache_entries() == []
    assert lab.veths() == []
    assert lab.pod_links() == ["lo"]
    assert lab.record_keys() == []
    assert not has_istio_rules(lab.pod), istio_rules(lab.pod)
    assert lab.capture_records() == [], "the executor's record of the namespace is dropped"


def down(lab: Lab, how: str) -> None:
    """Take the agent away: ``stopped`` (no socket), ``stale`` (a socket nobody listens on) or
    ``hung`` (it takes the connection and never answers)."""
    if how == "hung":
        lab.agent.hang()
        return
    lab.agent.stop()
    if how == "stale":
        stale_socket(lab.run_dir / "pluginevent.sock")


def weir_runs_print_only_protocol(runs: list[Run], result: dict[str, Any] | None = None) -> None:
    """weir-cni's stdout holds the protocol answer and nothing else; its stderr stays empty."""
    for run in runs:
        assert run.stderr == "", f"{run.command}: weir-cni wrote to stderr: {run.stderr!r}"
        if run.command == "ADD" and run.code == 0:
            assert json.loads(run.stdout) == result
        elif run.code == 0:
            assert run.stdout == "", f"{run.command}: weir-cni printed {run.stdout!r}"
        else:
            assert set(json.loads(run.stdout)) <= {"cniVersion", "code", "msg", "details"}


# ---- 1, 2: ADD, CHECK, DEL through the chain ------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_injected_pod_is_captured_checked_and_released(lab: Lab, version: str) -> None:
    lab.injected(NS, "hello")
    net, rec = lab.network(lab.conflist(version))
    rt = lab.rt(NS, "hello")

    result = net.add(rt)

    (bridge_add,) = rec.of("bridge", "ADD")
    (weir_add,) = rec.of(PLUGIN, "ADD")
    assert result == json.loads(bridge_add.stdout), "weir-cni passes prevResult through unchanged"
    assert result["cniVersion"] == version
    assert weir_add.stdin["prevResult"] == json.loads(bridge_add.stdout)
    rules = istio_rules(lab.pod)  # whichever iptables back-end the agent picked
    assert any(line.startswith("-A ISTIO_") for lines in rules.values() for line in lines), rules
    assert lab.record_keys() == [f"{rt.container_id}_eth0"]
    record = json.loads((lab.records / f"{rt.container_id}_eth0.json").read_text())
    assert record["captured"] is True
    assert record["attachment"]["ips"] == [result["ips"][0]["address"]]

    if version_key(version) >= version_key("0.4.0"):
        net.check(rt)
        _, deleted = delete_one_istio_rule(lab.pod)
        with pytest.raises(PluginError) as info:
            net.check(rt)
        err = info.value
        assert (err.plugin_type, err.command, err.code) == (PLUGIN, "CHECK", 101)
        assert f"{NS}/hello" in err.msg
        chain, rule = deleted.split(" ", 2)[1:]
        assert chain in err.details
        assert rule in err.details
        assert "(missing)" in err.details

    net.delete(rt)
    assert not has_istio_rules(lab.pod)
    assert lab.leases() == []
    assert lab.cache_entries() == []
    assert lab.record_keys() == []
    assert lab.pod_links() == ["lo"]
    net.delete(rt)  # a second DEL succeeds
    assert not has_istio_rules(lab.pod)
    weir_runs_print_only_protocol(rec.of(PLUGIN), result)


@pytest.mark.parametrize("version", VERSIONS)
def test_pod_without_sidecar_passes_through(lab: Lab, version: str) -> None:
    lab.plain(NS, "web")
    net, rec = lab.network(lab.conflist(version))
    rt = lab.rt(NS, "web")

    result = net.add(rt)

    assert result == json.loads(rec.of("bridge", "ADD")[0].stdout)
    assert not has_istio_rules(lab.pod)
    record = json.loads((lab.records / f"{rt.container_id}_eth0.json").read_text())
    assert record["captured"] is False
    if version_key(version) >= version_key("0.4.0"):
        net.check(rt)
    net.delete(rt)
    assert_nothing_left(lab)
    weir_runs_print_only_protocol(rec.of(PLUGIN), result)


def test_weir_cni_alone_speaks_1_1_0(lab: Lab) -> None:
    """The reference plugins stop at 1.0.0: weir-cni alone runs the 1.1.0 verbs."""
    lab.injected(NS, "hello")
    net, rec = lab.network(lab.conflist("1.1.0", bridge=False))
    rt = lab.rt(NS, "hello")

    net.status()
    result = net.add(rt)
    assert result == {"cniVersion": "1.1.0"}, "no prevResult: the empty result of the config's version"
    assert has_istio_rules(lab.pod)
    net.check(rt)
    delete_one_istio_rule(lab.pod)
    with pytest.raises(PluginError) as info:
        net.check(rt)
    assert (info.value.plugin_type, info.value.code) == (PLUGIN, 101)
    net.delete(rt)
    net.delete(rt)
    assert_nothing_left(lab)
    weir_runs_print_only_protocol(rec.of(PLUGIN), result)


# ---- 3: DEL without the agent, DEL without the namespace -----------------------------------------


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0"])
@pytest.mark.parametrize("how", ["stopped", "stale"])
def test_del_without_the_agent_removes_the_rules_itself(lab: Lab, version: str, how: str) -> None:
    lab.injected(NS, "hello")
    net, rec = lab.network(lab.conflist(version))
    rt = lab.rt(NS, "hello")
    net.add(rt)
    assert has_istio_rules(lab.pod)

    down(lab, how)
    net.delete(rt)

    assert not has_istio_rules(lab.pod)
    assert_nothing_left(lab)
    net.delete(rt)
    weir_runs_print_only_protocol(rec.of(PLUGIN, "DEL"))


@pytest.mark.parametrize("agent_up", [True, False], ids=["agent-up", "agent-down"])
def test_del_after_the_pod_netns_is_gone(lab: Lab, agent_up: bool) -> None:
    lab.injected(NS, "hello")
    net, _ = lab.network(lab.conflist("1.0.0"))
    rt = lab.rt(NS, "hello")
    net.add(rt)
    sh("ip", "netns", "del", lab.pod_name)
    assert not lab.pod.exists()
    if not agent_up:
        lab.agent.stop()

    net.delete(rt)
    net.delete(rt)
    env = lab.env("DEL", NS, "hello")
    del env["CNI_NETNS"]  # DEL may come without a namespace at all
    out, done = call_plugin(lab.plugin, env, {"cniVersion": "1.0.0", "name": NETWORK, **lab.weir()})
    assert (done.returncode, out, done.stderr) == (0, None, b"")

    assert lab.leases() == []
    assert lab.cache_entries() == []
    assert lab.veths() == []
    assert lab.record_keys() == []
    assert lab.capture_records() == [], "a namespace's inode may be reused: its executor record must go with it"


# ---- 4: STATUS -------------------------------------------------------------------------------------


def test_status_follows_the_agent(lab: Lab) -> None:
    conf = {"cniVersion": "1.1.0", "name": NETWORK, **lab.weir()}
    env = {"CNI_COMMAND": "STATUS", "CNI_PATH": os.pathsep.join(lab.path)}

    out, done = call_plugin(lab.plugin, env, conf)
    assert (done.returncode, out, done.stderr) == (0, None, b"")

    net, _ = lab.network(lab.conflist("1.1.0", bridge=False))
    net.status()

    lab.agent.server.ready.clear()
    out, done = call_plugin(lab.plugin, env, conf)
    assert done.returncode == 1
    assert out is not None
    assert (out["code"], out["cniVersion"]) == (50, "1.1.0")
    assert "not ready" in out["msg"]
    with pytest.raises(PluginError) as info:
        net.status()
    assert (info.value.plugin_type, info.value.code) == (PLUGIN, 50)

    lab.agent.server.ready.set()
    lab.agent.stop()
    out, done = call_plugin(lab.plugin, env, conf)
    assert done.returncode == 1
    assert out is not None
    assert out["code"] == 50
    assert "unreachable" in out.get("details", "")


# ---- 5: fail closed, fail open, excluded ----------------------------------------------------------


@pytest.mark.parametrize("how", ["stopped", "stale", "hung"])
def test_without_the_agent_add_fails_closed_and_rolls_back(lab: Lab, how: str) -> None:
    lab.injected(NS, "hello")
    net, rec = lab.network(lab.conflist("1.0.0", lab.weir(agent_timeout=0.5)))
    down(lab, how)

    with pytest.raises(PluginError) as info:
        net.add(lab.rt(NS, "hello"))

    err = info.value
    assert (err.plugin_type, err.command, err.code) == (PLUGIN, "ADD", 11)
    assert f"{NS}/hello" in err.msg
    assert [r.command for r in rec.runs] == ["ADD", "ADD", "DEL", "DEL"], "the runtime rolled the chain back"
    assert_nothing_left(lab)


def test_fail_open_namespace_starts_without_capture(lab: Lab) -> None:
    lab.injected(NS, "hello")
    net, rec = lab.network(lab.conflist("1.0.0", lab.weir(fail_open_namespaces=["other", NS])))
    lab.agent.stop()

    result = net.add(lab.rt(NS, "hello"))

    assert result == json.loads(rec.of("bridge", "ADD")[0].stdout)
    assert not has_istio_rules(lab.pod)
    assert lab.record_keys() == []
    net.delete(lab.rt(NS, "hello"))
    assert_nothing_left(lab)


@pytest.mark.parametrize(("pod_ns", "pod_name", "keys"), [
    ("kube-system", "coredns", {"exclude_namespaces": ["kube-system"]}),
    ("weir-system", "weir-cni-node-x7", {"pod_namespace": "weir-system"}),
], ids=["excluded-namespace", "agent-pod"])
def test_excluded_pods_pass_even_without_the_agent(lab: Lab, pod_ns: str, pod_name: str,
                                                   keys: dict[str, Any]) -> None:
    lab.injected(pod_ns, pod_name)  # would be captured, were it not excluded
    net, rec = lab.network(lab.conflist("1.0.0", lab.weir(**keys)))
    lab.agent.stop()

    result = net.add(lab.rt(pod_ns, pod_name))

    assert result == json.loads(rec.of("bridge", "ADD")[0].stdout)
    assert not has_istio_rules(lab.pod)
    net.check(lab.rt(pod_ns, pod_name))
    net.delete(lab.rt(pod_ns, pod_name))
    assert_nothing_left(lab)


# ---- 6: malformed input -------------------------------------------------------------------------------


_BAD_NETCONF = [
    ("exclude_namespaces", "kube-system"),
    ("fail_open_namespaces", [1, 2]),  # only consulted when the agent is down: checked up front all the same
    ("pod_namespace", ["weir-system"]),
    ("agent_timeout", 0),
    ("plugin_log_level", "loud"),
]


@pytest.mark.parametrize(("key", "value"), [pytest.param(k, v, id=k) for k, v in _BAD_NETCONF])
def test_malformed_netconf_is_code_7_and_leaves_nothing(lab: Lab, key: str, value: Any) -> None:
    lab.injected(NS, "hello")
    net, _ = lab.network(lab.conflist("1.0.0", lab.weir(**{key: value})))

    with pytest.raises(PluginError) as info:
        net.add(lab.rt(NS, "hello"))

    assert (info.value.plugin_type, info.value.command, info.value.code) == (PLUGIN, "ADD", 7)
    assert key in info.value.msg
    assert_nothing_left(lab)
    # The runtime's rollback DEL succeeded and said why it did nothing, in the configured run dir.
    entries = [json.loads(line) for line in lab.log_file.read_text().splitlines()]
    assert [(e["msg"], key in e["error"]) for e in entries] == [("DEL with an invalid config; nothing to do", True)]


def test_relative_run_dir_is_code_7(lab: Lab) -> None:
    # Called directly: a DEL with this config would log to the default run dir, the host's.
    lab.injected(NS, "hello")
    conf = {"cniVersion": "1.0.0", "name": NETWORK, **lab.weir(cni_agent_run_dir="run/weir")}

    out, done = call_plugin(lab.plugin, lab.env("ADD", NS, "hello"), conf)

    assert done.returncode == 1
    assert out is not None
    assert out["code"] == 7
    assert "cni_agent_run_dir" in out["msg"]
    assert "run/weir" in out["msg"]
    assert lab.record_keys() == []
    assert not has_istio_rules(lab.pod)


def test_malformed_cni_args_is_code_4(lab: Lab) -> None:
    lab.injected(NS, "hello")
    env = lab.env("ADD", NS, "hello", CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME")
    conf = {"cniVersion": "1.0.0", "name": NETWORK, **lab.weir()}

    out, done = call_plugin(lab.plugin, env, conf)

    assert done.returncode == 1
    assert out is not None
    assert out["code"] == 4
    assert "K8S_POD_NAME" in out["msg"]
    assert done.stderr == b""
    assert lab.record_keys() == []
    assert not has_istio_rules(lab.pod)


def test_bad_annotation_fails_add_with_code_7_and_rolls_back(lab: Lab) -> None:
    lab.injected(NS, "hello", **{"traffic.sidecar.istio.io/includeInboundPorts": "70000"})
    net, _ = lab.network(lab.conflist("1.0.0"))

    with pytest.raises(PluginError) as info:
        net.add(lab.rt(NS, "hello"))

    err = info.value
    assert (err.plugin_type, err.command, err.code) == (PLUGIN, "ADD", 7)
    assert "traffic.sidecar.istio.io/includeInboundPorts" in err.msg
    assert "70000" in err.msg
    assert_nothing_left(lab)


# ---- 7: GC ----------------------------------------------------------------------------------------------


def test_gc_removes_attachments_that_are_not_valid(lab: Lab) -> None:
    lab.injected(NS, "hello")
    lab.injected(NS, "other")
    net, rec = lab.network(lab.conflist("1.1.0", bridge=False))
    keep = lab.rt(NS, "hello", container_id="keep")
    tag, _ = new_tag()
    with namespace(f"wpq{tag}") as other:
        lost = lab.rt(NS, "other", container_id="lost", netns_path=other.path)
        for rt in (keep, lost):
            assert net.add(rt) == {"cniVersion": "1.1.0"}
        assert has_istio_rules(other)
        # The runtime lost its cache entry for "lost": only the plugins' GC can find it now.
        (lab.cache / "results" / f"{NETWORK}-lost-eth0").unlink()

        net.gc([Attachment("keep", "eth0")])

        assert lab.record_keys() == ["keep_eth0"]
        assert not has_istio_rules(other)
        assert has_istio_rules(lab.pod)
        (gc,) = rec.of(PLUGIN, "GC")
        assert gc.stdin["cni.dev/valid-attachments"] == [{"containerID": "keep", "ifname": "eth0"}]

        # Again with the agent down: the plugin removes the records (and rules) itself.
        lost2 = lab.rt(NS, "other", container_id="lost2", netns_path=other.path)
        net.add(lost2)
        (lab.cache / "results" / f"{NETWORK}-lost2-eth0").unlink()
        assert lab.record_keys() == ["keep_eth0", "lost2_eth0"]
        lab.agent.stop()

        net.gc([Attachment("keep", "eth0")])

        assert lab.record_keys() == ["keep_eth0"]
        assert not has_istio_rules(other)
        assert has_istio_rules(lab.pod)

    lab.agent.restart()
    net.delete(keep)
    assert_nothing_left(lab)
    weir_runs_print_only_protocol(rec.of(PLUGIN, "GC"))


# ---- 8: logs ----------------------------------------------------------------------------------------


def test_plugin_logs_reach_the_agent_or_the_log_file(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    lab.injected(NS, "hello")
    net, rec = lab.network(lab.conflist("1.0.0"))
    rt = lab.rt(NS, "hello")

    with caplog.at_level("INFO", logger="weir.cni-plugin"):
        result = net.add(rt)
    plugin_records = [r for r in caplog.records if r.name == "weir.cni-plugin"]
    assert any(r.getMessage() == "ADD" and getattr(r, "fields", {}).get("pod") == f"{NS}/hello"
               for r in plugin_records), [(r.getMessage(), getattr(r, "fields", None)) for r in plugin_records]
    assert not lab.log_file.exists()

    lab.agent.stop()
    net.delete(rt)

    entries = [json.loads(line) for line in lab.log_file.read_text().splitlines()]
    assert any(e["level"] == "warn" and e["msg"].startswith("DEL: agent did not remove the rules") for e in entries), \
        entries
    assert not has_istio_rules(lab.pod)
    weir_runs_print_only_protocol(rec.of(PLUGIN), result)


# ---- 9: the zipapp in a runtime's minimal environment ----------------------------------------------------


def test_zipapp_runs_with_only_cni_variables_and_the_standard_library(lab: Lab) -> None:
    lab.injected(NS, "hello")
    conf = {"cniVersion": "1.0.0", "name": NETWORK, **lab.weir()}

    out, done = call_plugin(lab.plugin, {"CNI_COMMAND": "VERSION"}, conf)
    assert done.returncode == 0
    assert out == {"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}

    out, done = call_plugin(lab.plugin, lab.env("ADD", NS, "hello"), conf)
    assert (done.returncode, out, done.stderr) == (0, {"cniVersion": "1.0.0"}, b"")
    assert has_istio_rules(lab.pod)

    # DEL with the agent gone: the plugin itself runs the iptables tools, without PATH.
    lab.agent.stop()
    out, done = call_plugin(lab.plugin, lab.env("DEL", NS, "hello"), conf, "/usr/bin/python3", "-IS",
                            "-X", "importtime")
    assert (done.returncode, out) == (0, None)
    assert not has_istio_rules(lab.pod), lab.log_file.read_text() if lab.log_file.exists() else ""
    assert lab.record_keys() == []

    stderr = done.stderr.decode()
    imported = [line for line in stderr.splitlines() if line.startswith("import time:")]
    assert any(line.endswith("weir.capture.apply") for line in imported), "the local removal path ran"
    # copy.py probes Jython's org.python.core and fails; nothing else may come from outside.
    outside = [m for m in modules_outside(["weir.cni", "weir.capture", "weir.netns"], stderr)
               if m.split(".")[0] != "org"]
    assert outside == []
    assert [line for line in stderr.splitlines() if not line.startswith("import time:")] == []
