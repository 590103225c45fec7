"""The conflist executor (weir.runtime.cni) against a recording fake Exec: what each plugin
reads, in which order, what is cached, what is rolled back, which verbs a version allows,
and how configurations and plugin errors are parsed."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from weir.runtime.cni import (
    Attachment,
    CheckNotSupportedError,
    CniConfigError,
    CniError,
    ConfList,
    Network,
    PluginError,
    PluginExec,
    PluginNotFoundError,
    RuntimeConf,
    netconf,
)
from weir.runtime.cnicache import CacheEntry, ResultCache

CNI_PATH = ["/opt/a", "/opt/b"]
PORTS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


@dataclass
class Call:
    plugin: str
    command: str
    env: dict[str, str]
    conf: dict[str, Any]


@dataclass
class FakeExec:
    """Records every invocation. ADD echoes prevResult with one interface named after the
    plugin appended; ``replies`` overrides the answer for (plugin, command)."""

    replies: dict[tuple[str, str], tuple[str, str, int]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def __call__(self, plugin_type: str, env: Mapping[str, str], stdin: str) -> tuple[str, str, int]:
        conf = json.loads(stdin)
        command = env["CNI_COMMAND"]
        self.calls.append(Call(plugin_type, command, dict(env), conf))
        if (plugin_type, command) in self.replies:
            return self.replies[(plugin_type, command)]
        if command != "ADD":
            return "", "", 0
        prev = conf.get("prevResult", {"interfaces": [], "ips": []})
        result = {"cniVersion": conf["cniVersion"], "interfaces": [*prev["interfaces"], {"name": plugin_type}],
                  "ips": prev["ips"] or [{"address": "10.1.0.2/24", "interface": 0}]}
        return json.dumps(result), "", 0

    def seen(self) -> list[tuple[str, str]]:
        return [(c.plugin, c.command) for c in self.calls]


def conflist(version: str = "1.0.0", **extra: Any) -> ConfList:
    return ConfList.from_dict({
        "cniVersion": version, "name": "podnet", **extra,
        "plugins": [
            {"type": "bridge", "name": "ignored", "cniVersion": "0.1.0", "bridge": "cni0",
             "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}},
            {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}, "snat": True},
            {"type": "weir-cni", "unknownKey": {"kept": [1, 2]}},
        ]})


def network(tmp_path: Path, fake: FakeExec, version: str = "1.0.0", **extra: Any) -> Network:
    return Network(conflist(version, **extra), CNI_PATH, tmp_path / "cache", exec=fake)


RT = RuntimeConf("c0ffee", "/var/run/netns/pod1", "eth0",
                 args=[("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "app")],
                 capability_args={"portMappings": PORTS, "bandwidth": {"ingressRate": 1}, "ipRanges": []})


def cache_file(tmp_path: Path, rt: RuntimeConf = RT, net: str = "podnet") -> Path:
    return tmp_path / "cache" / "results" / f"{net}-{rt.container_id}-{rt.ifname}"


# ---- ADD: netconf assembly, environment, cache ---------------------------------------------


def test_add_chains_prev_result_and_injects_name_version_and_capabilities(tmp_path: Path) -> None:
    fake = FakeExec()
    result = network(tmp_path, fake).add(RT)

    assert fake.seen() == [("bridge", "ADD"), ("portmap", "ADD"), ("weir-cni", "ADD")]
    first, second, third = (c.conf for c in fake.calls)
    assert (first["name"], first["cniVersion"]) == ("podnet", "1.0.0")  # the list's, not the plugin's
    assert "prevResult" not in first
    assert "runtimeConfig" not in first  # declares no capabilities
    assert first["ipam"] == {"type": "host-local", "subnet": "10.1.0.0/24"}
    assert second["prevResult"]["interfaces"] == [{"name": "bridge"}]
    assert second["runtimeConfig"] == {"portMappings": PORTS}  # only what it declares as true
    assert second["capabilities"] == {"portMappings": True, "bandwidth": False}
    assert third["prevResult"]["interfaces"] == [{"name": "bridge"}, {"name": "portmap"}]
    assert third["unknownKey"] == {"kept": [1, 2]}  # unknown keys pass through unchanged
    assert "runtimeConfig" not in third
    assert result["interfaces"] == [{"name": "bridge"}, {"name": "portmap"}, {"name": "weir-cni"}]


def test_add_environment(tmp_path: Path) -> None:
    fake = FakeExec()
    network(tmp_path, fake).add(RT)
    assert fake.calls[0].env == {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/pod1",
        "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=app",
        "CNI_PATH": os.pathsep.join(CNI_PATH)}
    assert all(c.env["CNI_ARGS"] == fake.calls[0].env["CNI_ARGS"] for c in fake.calls)


def test_runtime_config_left_out_when_no_declared_capability_has_an_argument(tmp_path: Path) -> None:
    fake = FakeExec()
    network(tmp_path, fake).add(RuntimeConf("c1", "/n", "eth0", capability_args={"bandwidth": {}}))
    assert all("runtimeConfig" not in c.conf for c in fake.calls)


def test_netconf_is_pure_and_replaces_a_stale_runtime_config() -> None:
    plugin = {"type": "p", "capabilities": {"a": True}, "runtimeConfig": {"old": 1}}
    conf = netconf(plugin, "n", "1.0.0", {"cniVersion": "1.0.0"}, {"a": 1, "b": 2})
    assert conf == {"type": "p", "capabilities": {"a": True}, "runtimeConfig": {"a": 1}, "name": "n",
                    "cniVersion": "1.0.0", "prevResult": {"cniVersion": "1.0.0"}}
    assert plugin == {"type": "p", "capabilities": {"a": True}, "runtimeConfig": {"old": 1}}


def test_add_caches_the_final_result_in_libcni_format(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake)
    result = net.add(RT)

    path = cache_file(tmp_path)
    record = json.loads(path.read_bytes())
    assert list(record) == ["kind", "containerId", "config", "ifName", "networkName", "netns", "cniArgs",
                            "capabilityArgs", "result"]
    assert record["kind"] == "cniCacheV1"
    assert (record["containerId"], record["ifName"], record["networkName"]) == ("c0ffee", "eth0", "podnet")
    assert record["netns"] == "/var/run/netns/pod1"
    assert record["cniArgs"] == [["K8S_POD_NAMESPACE", "default"], ["K8S_POD_NAME", "app"]]
    assert record["capabilityArgs"] == RT.capability_args  # all of them, unfiltered, as libcni
    assert json.loads(base64.b64decode(record["config"]))["name"] == "podnet"  # Go []byte: base64
    assert record["result"] == result
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
    assert net.cached_result(RT) == result


def test_cache_keeps_the_conflist_bytes_as_loaded(tmp_path: Path) -> None:
    text = b'{"cniVersion": "1.0.0", "name": "n1",  "plugins": [{"type": "bridge"}]}'
    (tmp_path / "n1.conflist").write_bytes(text)
    net = Network(ConfList.load(tmp_path / "n1.conflist"), CNI_PATH, tmp_path / "cache", exec=FakeExec())
    net.add(RT)
    record = json.loads(cache_file(tmp_path, net="n1").read_bytes())
    assert base64.b64decode(record["config"]) == text


def test_second_add_replaces_the_cache_entry(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake)
    net.add(RT)
    fake.replies[("weir-cni", "ADD")] = (json.dumps({"cniVersion": "1.0.0", "ips": [], "interfaces": []}), "", 0)
    net.add(RT)
    assert net.cached_result(RT) == {"cniVersion": "1.0.0", "ips": [], "interfaces": []}


# ---- ADD failures: rollback -----------------------------------------------------------------


def test_mid_chain_failure_deletes_the_whole_chain_in_reverse_and_raises(tmp_path: Path) -> None:
    error = {"cniVersion": "1.0.0", "code": 11, "msg": "try again later", "details": "agent busy"}
    fake = FakeExec(replies={("portmap", "ADD"): (json.dumps(error), "log line\n", 1)})
    with pytest.raises(PluginError) as info:
        network(tmp_path, fake).add(RT)

    assert (info.value.plugin_type, info.value.command, info.value.code) == ("portmap", "ADD", 11)
    assert fake.seen() == [("bridge", "ADD"), ("portmap", "ADD"),
                           ("weir-cni", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    assert all("prevResult" not in c.conf for c in fake.calls if c.command == "DEL")
    assert all(c.env["CNI_CONTAINERID"] == "c0ffee" for c in fake.calls)
    assert not cache_file(tmp_path).exists()


def test_rollback_failures_are_noted_and_the_first_error_raised(tmp_path: Path) -> None:
    fake = FakeExec(replies={("weir-cni", "ADD"): ("", "boom", 2), ("bridge", "DEL"): ("", "also broken", 1)})
    with pytest.raises(PluginError) as info:
        network(tmp_path, fake).add(RT)
    assert info.value.plugin_type == "weir-cni"
    assert any("bridge" in note and "also broken" in note for note in info.value.__notes__)
    assert fake.seen()[-3:] == [("weir-cni", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]


def test_an_add_without_a_result_is_a_failure_and_rolled_back(tmp_path: Path) -> None:
    fake = FakeExec(replies={("bridge", "ADD"): ("not json", "", 0)})
    with pytest.raises(PluginError, match="no result"):
        network(tmp_path, fake).add(RT)
    assert fake.seen() == [("bridge", "ADD"), ("weir-cni", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    assert not cache_file(tmp_path).exists()


def test_a_cache_write_failure_rolls_back(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    fake = FakeExec()
    with pytest.raises((FileExistsError, NotADirectoryError)):
        network(tmp_path, fake).add(RT)
    assert fake.seen()[3:] == [("weir-cni", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]


@pytest.mark.parametrize(("container_id", "ifname"), [("", "eth0"), ("../x", "eth0"), ("-x", "eth0"),
                                                      ("c1", ""), ("c1", "a/b"), ("c1", "x" * 16), ("c1", "e 0")])
def test_bad_attachment_arguments_are_refused_before_any_plugin_runs(tmp_path: Path, container_id: str,
                                                                     ifname: str) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake)
    for verb in (net.add, net.check, net.delete):
        with pytest.raises(CniError):
            verb(RuntimeConf(container_id, "/n", ifname))
    assert fake.calls == []


# ---- DEL ------------------------------------------------------------------------------------


def test_del_runs_in_reverse_with_the_cached_result_and_drops_the_cache(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake)
    result = net.add(RT)
    fake.calls.clear()
    net.delete(RT)

    assert fake.seen() == [("weir-cni", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    assert all(c.conf["prevResult"] == result for c in fake.calls)
    assert fake.calls[1].conf["runtimeConfig"] == {"portMappings": PORTS}
    assert not cache_file(tmp_path).exists()
    assert net.cached_result(RT) is None


def test_second_del_succeeds_without_prev_result(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake)
    net.add(RT)
    net.delete(RT)
    fake.calls.clear()
    net.delete(RT)
    assert fake.seen() == [("weir-cni", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    assert all("prevResult" not in c.conf for c in fake.calls)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'{"kind": "cniCacheV9"}',
                                     b'{"kind": "cniCacheV1", "containerId": "c0ffee"}'])
def test_del_with_a_corrupt_cache_entry_still_deletes(tmp_path: Path, content: bytes) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake)
    path = cache_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(CniError):
        net.cached_result(RT)
    net.delete(RT)
    assert len(fake.calls) == 3
    assert all("prevResult" not in c.conf for c in fake.calls)
    assert not path.exists()


def test_del_before_0_4_0_passes_no_prev_result_but_drops_the_cache(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake, "0.3.1")
    net.add(RT)
    fake.calls.clear()
    net.delete(RT)
    assert all("prevResult" not in c.conf for c in fake.calls)
    assert not cache_file(tmp_path).exists()


def test_a_failing_del_stops_the_chain_and_keeps_the_cache_for_a_retry(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake)
    result = net.add(RT)
    fake.calls.clear()
    fake.replies[("portmap", "DEL")] = (json.dumps({"code": 5, "msg": "iptables busy"}), "", 1)
    with pytest.raises(PluginError, match=r"portmap failed \(DEL\): \[5\] iptables busy"):
        net.delete(RT)
    assert fake.seen() == [("weir-cni", "DEL"), ("portmap", "DEL")]
    assert net.cached_result(RT) == result
    del fake.replies[("portmap", "DEL")]
    net.delete(RT)
    assert net.cached_result(RT) is None


# ---- CHECK ----------------------------------------------------------------------------------


def test_check_runs_in_order_with_the_cached_result(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake, "0.4.0")
    result = net.add(RT)
    fake.calls.clear()
    net.check(RT)
    assert fake.seen() == [("bridge", "CHECK"), ("portmap", "CHECK"), ("weir-cni", "CHECK")]
    assert all(c.conf["prevResult"] == result and c.conf["cniVersion"] == "0.4.0" for c in fake.calls)


def test_check_failure_raises_plugin_error(tmp_path: Path) -> None:
    fake = FakeExec(replies={("portmap", "CHECK"): (json.dumps({"code": 999, "msg": "chain missing"}), "", 1)})
    net = network(tmp_path, fake)
    net.add(RT)
    with pytest.raises(PluginError) as info:
        net.check(RT)
    assert (info.value.plugin_type, info.value.command, info.value.code, info.value.msg) == (
        "portmap", "CHECK", 999, "chain missing")
    assert fake.seen()[-1] == ("portmap", "CHECK")  # stops at the first failure


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "0.3.1"])
def test_check_is_refused_below_0_4_0(tmp_path: Path, version: str) -> None:
    fake = FakeExec()
    with pytest.raises(CheckNotSupportedError, match="does not support the CHECK command"):
        network(tmp_path, fake, version).check(RT)
    assert fake.calls == []


def test_disable_check_skips_check(tmp_path: Path) -> None:
    fake = FakeExec()
    network(tmp_path, fake, disableCheck=True).check(RT)
    assert fake.calls == []


# ---- STATUS and GC --------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_status_is_a_no_op_below_1_1_0(tmp_path: Path, version: str) -> None:
    fake = FakeExec()
    network(tmp_path, fake, version).status()
    assert fake.calls == []


def test_status_asks_each_plugin_and_raises_the_first_failure(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake, "1.1.0")
    net.status()
    assert fake.seen() == [("bridge", "STATUS"), ("portmap", "STATUS"), ("weir-cni", "STATUS")]
    call = fake.calls[0]
    assert (call.env["CNI_CONTAINERID"], call.env["CNI_NETNS"], call.env["CNI_IFNAME"]) == ("", "", "")
    assert "prevResult" not in call.conf
    assert call.conf["name"] == "podnet"
    fake.calls.clear()
    fake.replies[("portmap", "STATUS")] = (json.dumps({"code": 50, "msg": "not ready"}), "", 1)
    with pytest.raises(PluginError) as info:
        net.status()
    assert info.value.code == 50
    assert fake.seen() == [("bridge", "STATUS"), ("portmap", "STATUS")]


def _attach(net: Network, *container_ids: str) -> None:
    for cid in container_ids:
        net.add(RuntimeConf(cid, f"/var/run/netns/{cid}", "eth0", args=[("K", cid)]))


def test_gc_below_1_1_0_deletes_stale_cached_attachments_only(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake, "1.0.0")
    _attach(net, "keep", "stale")
    other = Network(ConfList.from_dict({"cniVersion": "1.0.0", "name": "other", "plugins": [{"type": "x"}]}),
                    CNI_PATH, tmp_path / "cache", exec=fake)
    _attach(other, "stale2")
    fake.calls.clear()

    net.gc([Attachment("keep", "eth0")])

    assert fake.seen() == [("weir-cni", "DEL"), ("portmap", "DEL"), ("bridge", "DEL")]
    call = fake.calls[0]
    assert (call.env["CNI_CONTAINERID"], call.env["CNI_NETNS"], call.env["CNI_ARGS"]) == (
        "stale", "/var/run/netns/stale", "K=stale")
    assert call.conf["prevResult"]["cniVersion"] == "1.0.0"
    assert [a.container_id for a in net.cached_attachments()] == ["keep"]
    assert [a.container_id for a in other.cached_attachments()] == ["stale2"]  # another network's


def test_gc_at_1_1_0_also_sends_gc_with_the_valid_attachments(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake, "1.1.0")
    _attach(net, "keep")
    fake.calls.clear()
    net.gc([Attachment("keep", "eth0"), Attachment("other", "net1")])
    assert fake.seen() == [("bridge", "GC"), ("portmap", "GC"), ("weir-cni", "GC")]
    assert all(c.conf["cni.dev/valid-attachments"] == [{"containerID": "keep", "ifname": "eth0"},
                                                       {"containerID": "other", "ifname": "net1"}]
               for c in fake.calls)
    assert fake.calls[0].env["CNI_CONTAINERID"] == ""
    assert net.cached_result(RuntimeConf("keep", "/n", "eth0")) is not None


def test_gc_continues_past_failures_and_raises_them_together(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake, "1.1.0")
    _attach(net, "a", "b")
    fake.calls.clear()
    fake.replies[("bridge", "DEL")] = ("", "bridge DEL broke", 1)
    fake.replies[("portmap", "GC")] = ("", "gc broke", 1)
    with pytest.raises(ExceptionGroup) as info:
        net.gc([])
    assert len(info.value.exceptions) == 3  # DEL of a, DEL of b, GC of portmap
    assert fake.seen()[-3:] == [("bridge", "GC"), ("portmap", "GC"), ("weir-cni", "GC")]


def test_disable_gc_does_nothing(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake, "1.1.0", disableGC="true")
    _attach(net, "stale")
    fake.calls.clear()
    net.gc([])
    assert fake.calls == []
    assert len(net.cached_attachments()) == 1


# ---- loopback -------------------------------------------------------------------------------


def test_loopback_up_and_down_run_containerds_cni_loopback_network(tmp_path: Path) -> None:
    fake = FakeExec()
    net = network(tmp_path, fake)
    net.loopback_up("c1", "/var/run/netns/p")
    call = fake.calls[0]
    assert (call.plugin, call.command, call.env["CNI_IFNAME"], call.env["CNI_NETNS"]) == (
        "loopback", "ADD", "lo", "/var/run/netns/p")
    assert call.conf == {"type": "loopback", "name": "cni-loopback", "cniVersion": "0.3.1"}
    assert (tmp_path / "cache" / "results" / "cni-loopback-c1-lo").exists()
    net.loopback_down("c1", "/var/run/netns/p")
    assert fake.seen() == [("loopback", "ADD"), ("loopback", "DEL")]
    assert not (tmp_path / "cache" / "results" / "cni-loopback-c1-lo").exists()


# ---- plugin errors --------------------------------------------------------------------------


def test_error_json_is_parsed() -> None:
    err = PluginError.from_output("bridge", "ADD", '{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"}',
                                  "log", 1)
    assert (err.code, err.msg, err.details, err.stderr) == (7, "bad", "why", "log")
    assert str(err) == "plugin bridge failed (ADD): [7] bad: why"


def test_error_without_json_keeps_stdout_and_stderr() -> None:
    err = PluginError.from_output("x", "DEL", "panic: oops", "goroutine 1", 2)
    assert err.code is None
    assert "panic: oops" in err.msg
    assert err.details == "goroutine 1"


def test_error_with_empty_stdout_uses_stderr_or_the_exit_status() -> None:
    assert "cannot open" in PluginError.from_output("x", "ADD", "", "cannot open\n", 1).msg
    assert PluginError.from_output("x", "ADD", " ", "", 3).msg == "exit status 3, no error message"


def test_a_non_integer_code_is_no_code() -> None:
    assert PluginError.from_output("x", "ADD", '{"code": "7", "msg": "m"}', "", 1).code is None


# ---- the default Exec -----------------------------------------------------------------------


def _script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_plugin_exec_finds_the_first_match_and_passes_env_and_stdin(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    record = tmp_path / "record"
    _script(tmp_path / "b", "echoer", "exit 9\n")
    _script(tmp_path / "a", "echoer", f'cat > {record}.stdin\nenv > {record}.env\n'
                                      'printf \'{"cniVersion":"1.0.0"}\'\necho log >&2\n')
    (tmp_path / "a" / "notexec").write_text("")
    monkeypatch.setenv("CNI_NETNS", "/inherited/must/not/leak")
    monkeypatch.setenv("WEIR_TEST_MARK", "kept")
    run = PluginExec([str(tmp_path / "missing"), str(tmp_path / "a"), str(tmp_path / "b")])

    out, err, code = run("echoer", {"CNI_COMMAND": "VERSION", "CNI_NETNS": ""}, '{"x": 1}')

    assert (out, err, code) == ('{"cniVersion":"1.0.0"}', "log\n", 0)
    assert (Path(f"{record}.stdin")).read_text() == '{"x": 1}'
    env = dict(line.split("=", 1) for line in Path(f"{record}.env").read_text().splitlines() if "=" in line)
    assert env["CNI_COMMAND"] == "VERSION"
    assert env["CNI_NETNS"] == ""
    assert env["WEIR_TEST_MARK"] == "kept"
    with pytest.raises(PluginNotFoundError, match="notexec"):
        run("notexec", {}, "")


def test_network_with_the_default_exec_raises_not_found_and_rolls_back(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _script(tmp_path / "bin", "first", f'echo "$CNI_COMMAND" >> {log}\n'
                                       'echo \'{"cniVersion":"1.0.0","interfaces":[],"ips":[]}\'\n')
    plugins = [{"type": "first"}, {"type": "absent"}]
    net = Network(ConfList.from_dict({"cniVersion": "1.0.0", "name": "n", "plugins": plugins}),
                  [str(tmp_path / "bin")], tmp_path / "cache")
    with pytest.raises(PluginNotFoundError) as info:
        net.add(RuntimeConf("c1", "/n", "eth0"))
    assert log.read_text().split() == ["ADD", "DEL"]
    assert any("absent" in note for note in info.value.__notes__)


# ---- configuration --------------------------------------------------------------------------


def test_conflist_fields() -> None:
    conf = ConfList.from_dict({"cniVersion": "0.4.0", "name": "n.1-x_y", "disableCheck": "TRUE",
                               "disableGC": False, "plugins": [{"type": "bridge"}, {"type": "portmap"}]})
    assert (conf.name, conf.cni_version, conf.disable_check, conf.disable_gc) == ("n.1-x_y", "0.4.0", True, False)
    assert conf.plugins == ({"type": "bridge"}, {"type": "portmap"})
    assert conf.cni_versions == ()


def test_cni_versions_picks_the_highest_known_version() -> None:
    conf = ConfList.from_dict({"cniVersion": "0.3.1", "cniVersions": ["0.4.0", "1.0.0", "2.0.0"], "name": "n",
                               "plugins": [{"type": "p"}]})
    assert conf.cni_version == "1.0.0"
    assert conf.cni_versions == ("0.4.0", "1.0.0", "2.0.0")
    only = ConfList.from_dict({"cniVersions": ["1.1.0", "0.3.1"], "name": "n", "plugins": [{"type": "p"}]})
    assert only.cni_version == "1.1.0"


def test_a_single_conf_becomes_a_list_of_one(tmp_path: Path) -> None:
    raw = {"cniVersion": "0.3.1", "name": "mynet", "type": "bridge", "bridge": "cni0",
           "ipam": {"type": "host-local", "subnet": "10.2.0.0/24"}}
    path = tmp_path / "10-mynet.conf"
    path.write_text(json.dumps(raw))
    for conf in (ConfList.load(path), ConfList.from_dict(raw)):
        assert (conf.name, conf.cni_version) == ("mynet", "0.3.1")
        assert conf.plugins == (raw,)
        assert json.loads(conf.raw) == {"name": "mynet", "cniVersion": "0.3.1", "plugins": [raw]}


def test_conflist_drop_in_plugins_are_appended(tmp_path: Path) -> None:
    (tmp_path / "10-k8s.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}]}))
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "20-weir.conf").write_text('{"type": "weir-cni"}')
    (tmp_path / "k8s" / "10-portmap.conf").write_text('{"type": "portmap"}')
    (tmp_path / "k8s" / "ignored.json").write_text('{"type": "nope"}')
    assert [p["type"] for p in ConfList.load(tmp_path / "10-k8s.conflist").plugins] == [
        "bridge", "portmap", "weir-cni"]
    (tmp_path / "10-k8s.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "k8s", "loadOnlyInlinedPlugins": True, "plugins": [{"type": "bridge"}]}))
    assert [p["type"] for p in ConfList.load(tmp_path / "10-k8s.conflist").plugins] == ["bridge"]


BAD = [
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [', "<json>", "invalid JSON"),
    ('[{"type": "x"}]', "<top>", "JSON object"),
    ('{"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}', "name", "missing"),
    ('{"cniVersion": "1.0.0", "name": "", "plugins": [{"type": "x"}]}', "name", "invalid"),
    ('{"cniVersion": "1.0.0", "name": "-n", "plugins": [{"type": "x"}]}', "name", "must start"),
    ('{"cniVersion": "1.0.0", "name": "n"}', "plugins", "missing"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "plugins", "empty"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": {"type": "x"}}', "plugins", "must be a list"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x"}, {"bridge": "b"}]}', "plugins[1].type",
     "missing"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": ["bridge"]}', "plugins[0]", "must be an object"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../../bin/sh"}]}', "plugins[0].type",
     "plain file name"),
    ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x", "capabilities": {"a": 1}}]}',
     "plugins[0].capabilities", "true or false"),
    ('{"name": "n", "plugins": [{"type": "x"}]}', "cniVersion", "missing"),
    ('{"cniVersion": "0.5.0", "name": "n", "plugins": [{"type": "x"}]}', "cniVersion", "unsupported version"),
    ('{"cniVersion": "2.0.0", "name": "n", "plugins": [{"type": "x"}]}', "cniVersion", "unsupported version"),
    ('{"cniVersion": 1, "name": "n", "plugins": [{"type": "x"}]}', "cniVersion", "must be a string"),
    ('{"cniVersions": ["1.0.0", "one"], "name": "n", "plugins": [{"type": "x"}]}', "cniVersions[1]",
     "not a CNI version"),
    ('{"cniVersions": ["3.0.0"], "name": "n", "plugins": [{"type": "x"}]}', "cniVersion", "missing"),
    ('{"cniVersion": "1.0.0", "name": "n", "disableCheck": "yes", "plugins": [{"type": "x"}]}', "disableCheck",
     "true or false"),
]


@pytest.mark.parametrize(("text", "field_name", "problem"), BAD)
def test_bad_conflists_name_the_file_and_field(tmp_path: Path, text: str, field_name: str, problem: str) -> None:
    path = tmp_path / "99-bad.conflist"
    path.write_text(text)
    with pytest.raises(CniConfigError) as info:
        ConfList.load(path)
    assert info.value.source == str(path)
    assert info.value.field == field_name
    assert problem in info.value.problem
    assert str(path) in str(info.value)
    assert field_name in str(info.value)


@pytest.mark.parametrize(("name", "text", "field_name"), [
    ("x.conf", '{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "x"}]}', "type"),
    ("x.conflist", '{"cniVersion": "1.0.0", "name": "n", "type": "bridge"}', "plugins"),
    ("x.conf", '{"cniVersion": "1.0.0", "type": "bridge"}', "name"),
    ("missing.conflist", None, "<file>"),
])
def test_the_wrong_kind_of_file_is_refused(tmp_path: Path, name: str, text: str | None, field_name: str) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(CniConfigError) as info:
        ConfList.load(tmp_path / name)
    assert info.value.field == field_name


# ---- the cache ------------------------------------------------------------------------------


def test_cache_reads_a_legacy_bare_result(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    cache.directory.mkdir(parents=True)
    (cache.directory / "net-c1-eth0").write_text('{"cniVersion": "0.4.0", "ips": []}')
    entry = cache.read("net", "c1", "eth0")
    assert entry is not None
    assert entry.result == {"cniVersion": "0.4.0", "ips": []}
    assert cache.entries() == []  # not a cniCacheV1 record: no attachment to GC


def test_cache_round_trip_and_removal(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    entry = CacheEntry("c1", "net", "eth0", b"{}", "/ns", (("a", "b"),), {"portMappings": []},
                       {"cniVersion": "1.0.0"})
    cache.write(entry)
    assert cache.read("net", "c1", "eth0") == entry
    assert cache.remove("net", "c1", "eth0") is True
    assert cache.remove("net", "c1", "eth0") is False
    assert cache.read("net", "c1", "eth0") is None
    with pytest.raises(ValueError, match="container ID"):
        cache.path("net", "", "eth0")
