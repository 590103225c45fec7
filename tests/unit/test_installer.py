"""The installer: settings, Go-style JSON, libcni's rules, the throttle (pure), and the driver on
temporary directories (install / check / cleanup in every mode). The watch loop under fire is in
``test_installer_watch.py``."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from weir.cni import bundle
from weir.nodeagent.install import (
    InstallConfig,
    PlanError,
    Throttle,
    plan_config,
    render_kubeconfig,
)
from weir.nodeagent.installconf import (
    ConfDir,
    ConfError,
    Mode,
    go_loads,
    go_marshal,
    insert_entry,
    same_json,
    valid_configs,
)
from weir.nodeagent.installer import (
    COPY_BINARIES_FAILURE,
    CREATE_KUBECONFIG_FAILURE,
    SUCCESS,
    Installer,
    InstallError,
    NoPrimaryConfig,
    read_conf_dir,
)
from weir.nodeagent.settings import ConfigError, Source
from weir.runtime.cni import ConfList

# A primary as people write them: keys unsorted, odd spacing, an integer that Go re-marshals.
CALICO = b"""{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "mtu": 1500, "ipam": {"type": "calico-ipam"},
     "policy": {"type": "k8s"}, "log_level": "info"},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
"""
BRIDGE_CONF = b'{"cniVersion": "0.4.0", "name": "dbnet", "type": "bridge", "bridge": "cni0",\n "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}}\n'  # noqa: E501


def source(**env: str) -> Source:
    return Source({}, env)


# ---- settings --------------------------------------------------------------------------------------


def test_defaults_are_weirs() -> None:
    cfg = InstallConfig.from_source(source())
    assert cfg == InstallConfig()
    assert (cfg.conf_dir, cfg.bin_dirs, cfg.run_dir) == ("/etc/cni/net.d", ("/opt/cni/bin",), "/var/run/weir-cni")
    assert cfg.mode is Mode.CHAINED
    assert cfg.owned_filename == "02-weir-cni.conflist"
    assert cfg.kubeconfig_mode == 0o600
    assert cfg.plugin_log_level == "info"
    assert not cfg.writes_kubeconfig


def test_istio_names_and_flags() -> None:
    env = {"CNI_CONF_NAME": "10-calico.conflist", "CHAINED_CNI_PLUGIN": "true", "MOUNTED_CNI_NET_DIR": "/host/net.d/",
           "CNI_BIN_DIR": "/opt/cni/bin, /home/kubernetes/bin,/opt/cni/bin", "CNI_AGENT_RUN_DIR": "/run/w",
           "ISTIO_OWNED_CNI_CONFIG": "true", "ISTIO_OWNED_CNI_CONF_FILENAME": "01-w.conflist",
           "CNI_CONF_GROUP_READ": "1", "KUBECONFIG_MODE": "0640", "KUBERNETES_SERVICE_HOST": "fd00::1",
           "KUBERNETES_SERVICE_PORT": "6443", "KUBERNETES_SERVICE_PROTOCOL": "HTTPS", "KUBE_CA_FILE": "/ca.pem",
           "SKIP_TLS_VERIFY": "false", "EXCLUDE_NAMESPACES": "kube-system, istio-system,kube-system",
           "POD_NAMESPACE": "istio-system", "CNI_PLUGIN_LOG_LEVEL": "DEBUG", "NATIVE_NFTABLES": "true"}
    cfg = InstallConfig.from_source(Source({"cni_conf_dir": "/flag/net.d", "log_level": "warn"}, env))
    assert cfg.conf_dir == "/flag/net.d"  # the flag wins over MOUNTED_CNI_NET_DIR
    assert cfg.bin_dirs == ("/opt/cni/bin", "/home/kubernetes/bin")
    assert cfg.mode is Mode.OWNED
    assert cfg.owned_filename == "01-w.conflist"
    assert cfg.conf_file_mode == 0o640
    assert cfg.kubeconfig_mode == 0o640
    assert cfg.k8s_service_protocol == "https"
    assert cfg.writes_kubeconfig
    assert cfg.exclude_namespaces == ("kube-system", "istio-system")
    assert cfg.plugin_log_level == "warn"
    assert cfg.native_nftables
    assert cfg.run_dir == "/run/w"
    assert cfg.conf_name == "10-calico.conflist"
    entry = cfg.entry().to_object("weir-cni")
    assert entry["type"] == entry["name"] == "weir-cni"
    assert entry["cni_agent_run_dir"] == "/run/w"
    assert entry["exclude_namespaces"] == ["kube-system", "istio-system"]
    assert entry["pod_namespace"] == "istio-system"


@pytest.mark.parametrize(("env", "named"), [
    ({"CHAINED_CNI_PLUGIN": "maybe"}, "CHAINED_CNI_PLUGIN"),
    ({"MOUNTED_CNI_NET_DIR": "etc/cni"}, "MOUNTED_CNI_NET_DIR"),
    ({"CNI_BIN_DIR": "/opt/cni/bin,relative"}, "CNI_BIN_DIR"),
    ({"CNI_BIN_DIR": ""}, "CNI_BIN_DIR"),
    ({"CNI_AGENT_RUN_DIR": "run"}, "CNI_AGENT_RUN_DIR"),
    ({"CNI_CONF_NAME": "../x.conf"}, "CNI_CONF_NAME"),
    ({"CHAINED_CNI_PLUGIN": "false", "CNI_CONF_NAME": "x.conflist"}, "CNI_CONF_NAME"),
    ({"ISTIO_OWNED_CNI_CONF_FILENAME": "02-w.conf"}, "ISTIO_OWNED_CNI_CONF_FILENAME"),
    ({"ISTIO_OWNED_CNI_CONFIG": "yes please"}, "ISTIO_OWNED_CNI_CONFIG"),
    ({"CNI_CONF_DROPIN": "true", "CHAINED_CNI_PLUGIN": "false"}, "CNI_CONF_DROPIN"),
    ({"CNI_CONF_DROPIN": "true", "ISTIO_OWNED_CNI_CONFIG": "true"}, "CNI_CONF_DROPIN"),
    ({"CNI_CONF_GROUP_READ": "2"}, "CNI_CONF_GROUP_READ"),
    ({"KUBECONFIG_MODE": "0999"}, "KUBECONFIG_MODE"),
    ({"KUBECONFIG_MODE": "rw-------"}, "KUBECONFIG_MODE"),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "KUBERNETES_SERVICE_PORT"),
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "70000"}, "KUBERNETES_SERVICE_PORT"),
    ({"KUBERNETES_SERVICE_PROTOCOL": "ftp"}, "KUBERNETES_SERVICE_PROTOCOL"),
    ({"KUBE_CA_FILE": "ca.crt"}, "KUBE_CA_FILE"),
    ({"SKIP_TLS_VERIFY": "sure"}, "SKIP_TLS_VERIFY"),
    ({"CNI_PLUGIN_LOG_LEVEL": "loud"}, "CNI_PLUGIN_LOG_LEVEL"),
    ({"NATIVE_NFTABLES": "nft"}, "NATIVE_NFTABLES"),
])
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        InstallConfig.from_source(source(**env))


def test_bad_flag_is_named_as_flag() -> None:
    with pytest.raises(ConfigError, match="--cni-bin-dir"):
        InstallConfig.from_source(Source({"cni-bin-dir": "bin"}, {}))


def test_kubeconfig_mode_is_octal() -> None:
    for text in ("600", "0600", "0o600"):
        assert InstallConfig.from_source(source(KUBECONFIG_MODE=text)).kubeconfig_mode == 0o600


# ---- Go's JSON ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "marshalled"), [
    ("1500", "1500"), ("1500.0", "1500"), ("-0.0", "-0"), ("0.1", "0.1"), ("1e20", "100000000000000000000"),
    ("1e21", "1e+21"), ("0.000001", "0.000001"), ("1e-7", "1e-7"), ("1.5e-10", "1.5e-10"),
    ("12345678901234567890", "12345678901234567000"), ('"<a&b>"', '"\\u003ca\\u0026b\\u003e"'),
    ('"caf\u00e9 \\u2028"', '"caf\u00e9 \\u2028"'), ('"\\ud800x"', '"\ufffdx"'), ('"tab\\t\\u0001"', '"tab\\t\\u0001"'),
    ("[]", "[]"), ("{}", "{}"), ('{"b": 1, "a": [true, null]}', '{\n  "a": [\n    true,\n    null\n  ],\n  "b": 1\n}'),
])
def test_go_json_round_trip(text: str, marshalled: str) -> None:
    assert go_marshal(go_loads(text.encode())) == (marshalled + "\n").encode()


@pytest.mark.parametrize("text", [b"NaN", b"1e400", b"[1,", b"\xef\xbb\xbf{}", b'"a" "b"'])
def test_go_json_rejects(text: bytes) -> None:
    with pytest.raises(ConfError):
        go_loads(text)


def test_same_json_is_type_strict() -> None:
    assert same_json(go_loads(b'{"a": [1, {"b": 2}]}'), go_loads(b'{"a": [1.0, {"b": 2e0}]}'))
    assert not same_json(go_loads(b"[true]"), go_loads(b"[1]"))


# ---- libcni's rules ------------------------------------------------------------------------------------


def one(name: str, data: bytes, dropins: dict[str, dict[str, bytes | None] | None] | None = None) -> bool:
    return valid_configs(ConfDir({name: data}, dropins or {})) == [name]


@pytest.mark.parametrize(("name", "data", "valid"), [
    ("a.conf", b'{"type": "bridge"}', True),
    ("a.conf", b'{"Type": "bridge"}', True),  # Go matches struct fields case-insensitively
    ("a.conf", b'{"type": ""}', False),
    ("a.conf", b'{"type": "bridge", "ipam": "host-local"}', False),  # wrong type for a PluginConf field
    ("a.conf", b'{"type": "bridge", "dns": {"nameservers": [1]}}', False),
    ("a.conf", b'{"name": "n", "plugins": [{"type": "bridge"}]}', False),  # a list misnamed .conf
    ("a.conflist", b'{"name": "n", "plugins": [{"type": "bridge"}]}', True),
    ("a.conflist", b'{"name": "", "plugins": [{"type": "bridge"}]}', True),
    ("a.conflist", b'{"plugins": [{"type": "bridge"}]}', False),
    ("a.conflist", b'{"name": "n", "plugins": []}', False),
    ("a.conflist", b'{"name": "n", "plugins": [{"type": "bridge"}, "x"]}', False),
    ("a.conflist", b'{"name": "n", "cniVersion": 1, "plugins": [{"type": "b"}]}', False),
    ("a.conflist", b'{"name": "n", "cniVersions": ["1.0.0", "x"], "plugins": [{"type": "b"}]}', False),
    ("a.conflist", b'{"name": "n", "disableCheck": "TRUE", "plugins": [{"type": "b"}]}', True),
    ("a.conflist", b'{"name": "n", "disableGC": "yes", "plugins": [{"type": "b"}]}', False),
    ("a.json", b'{"type": "bridge"}', False),  # not an extension libcni lists for Istio
    (".conf", b'{"type": "bridge"}', True),  # Go's filepath.Ext(".conf") is ".conf"
])
def test_validity(name: str, data: bytes, valid: bool) -> None:
    assert one(name, data) is valid


def test_dropins_count_in_validity() -> None:
    lst = b'{"name": "n", "cniVersion": "1.1.0"}'
    assert not one("a.conflist", lst)  # no plugin at all
    assert one("a.conflist", lst, {"n": {"x.conf": b'{"type": "bridge"}'}})  # all plugins from drop-ins
    assert not one("a.conflist", lst, {"n": {"x.conf": b'{"name": "x"}'}})  # a bad drop-in breaks the list
    assert not one("a.conflist", lst, {"n": None})  # unreadable drop-in directory
    inline_only = b'{"name": "n", "loadOnlyInlinedPlugins": "True", "plugins": [{"type": "b"}]}'
    assert one("a.conflist", inline_only, {"n": {"x.conf": b"not json"}})  # ignored when inline only


def test_sorting_is_bytewise() -> None:
    conf = ConfDir(dict.fromkeys(("b.conf", "B.conf", "10-a.conf", "9-a.conf", "_a.conf"), b'{"type": "b"}'))
    assert valid_configs(conf) == ["10-a.conf", "9-a.conf", "B.conf", "_a.conf", "b.conf"]


# ---- the throttle ---------------------------------------------------------------------------------------


def test_throttle_waits_and_counts_rapid_reinstalls() -> None:
    throttle, now = Throttle(interval=5.0, max_delay=0.5, warn_after=5), 100.0
    assert throttle.reserve(now) == 0
    assert throttle.hits == 0
    delays = []
    for _ in range(7):
        now += 0.1
        delays.append(throttle.reserve(now))
        now += delays[-1]
    assert delays == [0.5] * 7
    assert throttle.hits == 7
    assert throttle.fighting
    assert throttle.reserve(now + 5.0) == 0
    assert throttle.hits == 0
    assert not throttle.fighting


def test_throttle_warns_once_then_every_tenth() -> None:
    throttle, now, warned = Throttle(), 0.0, []
    for _ in range(20):
        now += throttle.reserve(now) + 0.01
        warned.append(throttle.should_warn())
    assert [i for i, w in enumerate(warned) if w] == [6, 16]


# ---- the kubeconfig -------------------------------------------------------------------------------------


ODD_TOKEN = "tok: #1\n"
NUMERIC_TOKEN = "12345"


def test_kubeconfig_yaml_is_what_it_says() -> None:
    text = render_kubeconfig(host="fd00::1", port="6443", token=ODD_TOKEN, ca_data=b"CA", user="weir-cni",
                             context="weir-cni-context")
    doc = yaml.safe_load(text)
    assert doc["clusters"][0]["cluster"] == {"certificate-authority-data": "Q0E=", "server": "https://[fd00::1]:6443"}
    assert doc["users"] == [{"name": "weir-cni", "user": {"token": ODD_TOKEN}}]
    assert doc["current-context"] == "weir-cni-context"
    assert yaml.safe_load(render_kubeconfig(host="h", port="1", token=NUMERIC_TOKEN, skip_tls_verify=True))[
        "users"][0]["user"]["token"] == NUMERIC_TOKEN


# ---- the driver -----------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.results: list[str] = []
        self.readiness: list[bool] = []

    def install_result(self, result: str) -> None:
        self.results.append(result)

    def set_ready(self, ready: bool) -> None:
        self.readiness.append(ready)


class Node:
    """A fake node: conf dir, bin dirs, run dir, service-account dir, under ``tmp_path``."""

    def __init__(self, root: Path, bins: int = 1) -> None:
        self.root = root
        self.conf = root / "net.d"
        self.bins = [root / f"bin{i}" for i in range(bins)]
        self.run = root / "run"
        self.sa = root / "sa"
        for d in (self.conf, self.run, self.sa, *self.bins):
            d.mkdir()
        (self.sa / "token").write_text("token-1")
        (self.sa / "ca.crt").write_bytes(b"-----CA-----\n")
        self.plugin = root / "plugin"
        self.plugin.write_bytes(b"#!/bin/sh\necho plugin\n")

    def config(self, **kw: Any) -> InstallConfig:
        fields: dict[str, Any] = {"conf_dir": str(self.conf), "bin_dirs": tuple(map(str, self.bins)),
                                  "run_dir": str(self.run), "service_account_dir": str(self.sa)}
        fields.update(kw)
        return InstallConfig(**fields)

    def installer(self, **kw: Any) -> Installer:
        observers = kw.pop("observers", ())
        return Installer(self.config(**kw), plugin_file=str(self.plugin), observers=observers)

    def write(self, name: str, data: bytes, mode: int = 0o644) -> Path:
        path = self.conf / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
        return path

    def listing(self) -> list[str]:
        return sorted(os.listdir(self.conf))


def entry_of(path: Path, kind: str = "weir-cni") -> dict[str, Any] | None:
    conf = json.loads(path.read_bytes())
    return next((p for p in conf.get("plugins", []) if p.get("type") == kind), None)


@pytest.mark.parametrize("mode", [0o644, 0o600, 0o640])
def test_chained_round_trip_is_byte_identical(tmp_path: Path, mode: int) -> None:
    node = Node(tmp_path)
    primary = node.write("10-calico.conflist", CALICO, mode)
    rec = Recorder()
    installer = node.installer(observers=[rec])
    assert installer.install_all() == str(primary)
    conf = json.loads(primary.read_bytes())
    assert [p["type"] for p in conf["plugins"]] == ["calico", "portmap", "weir-cni"]  # appended last
    assert primary.read_bytes() == insert_entry(CALICO, node.config().entry().to_object("weir-cni"), "weir-cni")
    assert stat.S_IMODE(primary.stat().st_mode) == mode
    assert installer.check().ok
    assert rec.results == [SUCCESS]
    installer.cleanup()
    assert primary.read_bytes() == CALICO  # not Istio's re-marshalled bytes: the original ones
    assert stat.S_IMODE(primary.stat().st_mode) == mode
    assert node.listing() == ["10-calico.conflist"]
    assert not any(os.listdir(d) for d in node.bins)
    assert not os.listdir(node.run)


def test_install_is_idempotent(tmp_path: Path) -> None:
    node = Node(tmp_path)
    primary = node.write("10-calico.conflist", CALICO)
    installer = node.installer()
    installer.install_all()
    before = (primary.stat().st_ino, primary.read_bytes(), (node.bins[0] / "weir-cni").stat().st_ino)
    installer.install_all()
    node.installer().install_all()  # a restarted agent finds its entry in force and writes nothing
    assert (primary.stat().st_ino, primary.read_bytes(), (node.bins[0] / "weir-cni").stat().st_ino) == before


def test_cleanup_after_restart_still_byte_identical(tmp_path: Path) -> None:
    node = Node(tmp_path)
    primary = node.write("10-calico.conflist", CALICO)
    node.installer().install_all()
    node.installer().cleanup()  # a new process: the original came from the run dir
    assert primary.read_bytes() == CALICO


def test_cleanup_keeps_another_components_change(tmp_path: Path) -> None:
    node = Node(tmp_path)
    primary = node.write("10-calico.conflist", CALICO)
    installer = node.installer()
    installer.install_all()
    conf = json.loads(primary.read_bytes())
    conf["plugins"][0]["mtu"] = 9000  # calico changed its MTU after weir inserted
    primary.write_text(json.dumps(conf))
    installer.cleanup()
    after = json.loads(primary.read_bytes())
    assert [p["type"] for p in after["plugins"]] == ["calico", "portmap"]
    assert after["plugins"][0]["mtu"] == 9000


def test_conf_is_converted_and_restored(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("10-bridge.conf", BRIDGE_CONF, 0o640)
    installer = node.installer()
    path = Path(installer.install_all())
    assert path.name == "10-bridge.conflist"
    assert node.listing() == ["10-bridge.conflist"]
    conf = json.loads(path.read_bytes())
    assert (conf["name"], conf["cniVersion"]) == ("k8s-pod-network", "0.3.1")
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "weir-cni"]
    assert "cniVersion" not in conf["plugins"][0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    installer.cleanup()
    assert node.listing() == ["10-bridge.conf"]  # weir gives the .conf back (Istio leaves the .conflist)
    assert (node.conf / "10-bridge.conf").read_bytes() == BRIDGE_CONF
    assert stat.S_IMODE((node.conf / "10-bridge.conf").stat().st_mode) == 0o640


def test_pinned_primary_and_preemption(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("20-calico.conflist", CALICO)
    installer = node.installer()
    installer.install_all()
    first = node.write("10-other.conflist", b'{"name": "other", "plugins": [{"type": "ptp"}]}')
    verdict = installer.check()
    assert not verdict.ok
    assert "10-other.conflist" in (verdict.problem or "")
    installer.install_all()
    assert entry_of(first) is not None
    assert installer.check().ok
    installer.cleanup()  # the entry leaves both files
    assert entry_of(node.conf / "20-calico.conflist") is None
    assert (node.conf / "20-calico.conflist").read_bytes() == CALICO
    assert entry_of(first) is None
    pinned = node.installer(conf_name="20-calico.conflist")
    pinned.install_all()
    assert entry_of(node.conf / "20-calico.conflist") is not None
    assert entry_of(first) is None
    assert pinned.check().ok
    assert pinned.check().warnings
    pinned.cleanup()


def test_entry_drift_is_rewritten(tmp_path: Path) -> None:
    node = Node(tmp_path)
    primary = node.write("10-calico.conflist", CALICO)
    node.installer().install_all()
    debug = node.installer(plugin_log_level="debug")
    assert "differs" in (debug.check().problem or "")
    debug.install_all()
    assert entry_of(primary)["plugin_log_level"] == "debug"  # type: ignore[index]
    debug.cleanup()
    assert primary.read_bytes() == CALICO


@pytest.mark.parametrize(("group_read", "mode"), [(False, 0o600), (True, 0o640)])
def test_standalone(tmp_path: Path, group_read: bool, mode: int) -> None:
    node = Node(tmp_path)
    node.write("10-calico.conflist", CALICO)
    installer = node.installer(chained=False, group_read=group_read)
    path = Path(installer.install_all())
    assert path.name == "YYY-weir-cni.conf"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert list(json.loads(path.read_bytes()))[:4] == ["cniVersion", "name", "type", "ipam"]  # struct order
    assert (node.conf / "10-calico.conflist").read_bytes() == CALICO
    assert installer.check().ok
    installer.cleanup()
    assert node.listing() == ["10-calico.conflist"]


def test_switching_mode_removes_the_old_mode_files(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("10-calico.conflist", CALICO)
    node.installer(chained=False).install_all()
    chained = node.installer()
    chained.install_all()
    assert node.listing() == ["10-calico.conflist"]
    assert chained.check().ok
    chained.cleanup()
    assert (node.conf / "10-calico.conflist").read_bytes() == CALICO


def test_owned_copy(tmp_path: Path) -> None:
    node = Node(tmp_path)
    primary = node.write("10-calico.conflist", CALICO)
    inode = primary.stat().st_ino
    installer = node.installer(owned=True)
    owned = Path(installer.install_all())
    assert owned.name == "02-weir-cni.conflist"
    assert stat.S_IMODE(owned.stat().st_mode) == 0o600
    assert owned.read_bytes() == insert_entry(CALICO, node.config().entry().to_object("weir-cni"), "weir-cni")
    assert primary.read_bytes() == CALICO
    assert primary.stat().st_ino == inode
    assert installer.check().ok
    conf = json.loads(CALICO)
    conf["plugins"][0]["mtu"] = 9000  # the primary changes: the copy is stale
    primary.write_text(json.dumps(conf))
    assert not installer.check().ok
    installer.install_all()
    assert json.loads(owned.read_bytes())["plugins"][0]["mtu"] == 9000
    installer.cleanup()
    assert node.listing() == ["10-calico.conflist"]


def test_owned_name_must_sort_first(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("01-calico.conflist", CALICO)
    rec = Recorder()
    with pytest.raises(InstallError, match=r"does not sort before 01-calico\.conflist"):
        node.installer(owned=True, observers=[rec]).install_all()
    assert node.listing() == ["01-calico.conflist"]
    assert rec.results == ["CREATE_CNI_CONFIG_FAILURE"]


def test_dropin(tmp_path: Path) -> None:
    node = Node(tmp_path)
    primary = node.write("10-calico.conflist", CALICO)
    inode = primary.stat().st_ino
    installer = node.installer(dropin=True)
    path = Path(installer.install_all())
    assert path == node.conf / "k8s-pod-network" / "weir-cni.conf"
    assert primary.read_bytes() == CALICO
    assert primary.stat().st_ino == inode
    assert "cniVersion" not in json.loads(path.read_bytes())
    assert installer.check().ok
    # libcni semantics, as weir's embedded runtime loads lists: the drop-in runs last
    loaded = ConfList.load(primary)
    assert [p["type"] for p in loaded.plugins] == ["calico", "portmap", "weir-cni"]
    path.unlink()
    assert not installer.check().ok
    installer.install_all()
    installer.cleanup()
    assert node.listing() == ["10-calico.conflist"]
    assert primary.read_bytes() == CALICO


def test_dropin_leaves_a_shared_directory(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("10-calico.conflist", CALICO)
    other = node.write("k8s-pod-network/10-bandwidth.conf", b'{"type": "bandwidth"}')
    installer = node.installer(dropin=True)
    installer.install_all()
    installer.cleanup()
    assert os.listdir(other.parent) == ["10-bandwidth.conf"]


@pytest.mark.parametrize(("name", "data", "why"), [
    ("10-calico.conflist", CALICO.replace(b'"plugins"', b'"loadOnlyInlinedPlugins": true, "plugins"'),
     "loadOnlyInlinedPlugins is true"),
    ("10-bridge.conf", BRIDGE_CONF, "not a .conflist"),
])
def test_dropin_needs_a_list_that_loads_dropins(tmp_path: Path, name: str, data: bytes, why: str) -> None:
    node = Node(tmp_path)
    primary = node.write(name, data)
    installer = node.installer(dropin=True)
    with pytest.raises(InstallError, match=why):
        installer.install_all()
    assert primary.read_bytes() == data
    assert node.listing() == [name]
    assert why in (installer.check().problem or "")


def test_plugin_in_every_bin_dir(tmp_path: Path) -> None:
    node = Node(tmp_path, bins=3)
    node.write("10-calico.conflist", CALICO)
    stale = node.bins[1] / ".weir-cni.weir-cni-abc123.tmp"
    stale.write_bytes(b"half")
    installer = node.installer()
    installer.install_all()
    for d in node.bins:
        plugin = d / "weir-cni"
        assert plugin.read_bytes() == node.plugin.read_bytes()
        assert stat.S_IMODE(plugin.stat().st_mode) == 0o755
    assert not stale.exists()
    (node.bins[2] / "weir-cni").unlink()
    assert "bin2" in (installer.check().problem or "")
    installer.install_all()
    installer.cleanup()
    assert not any(os.listdir(d) for d in node.bins)


def test_default_plugin_is_the_bundle(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("10-calico.conflist", CALICO)
    Installer(node.config()).install_all()
    assert (node.bins[0] / "weir-cni").read_bytes() == bundle.build_bytes()


def test_copy_failure_is_reported(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("10-calico.conflist", CALICO)
    rec = Recorder()
    installer = Installer(node.config(), plugin_file=str(tmp_path / "missing"), observers=[rec])
    with pytest.raises(InstallError) as info:
        installer.install_all()
    assert info.value.result == COPY_BINARIES_FAILURE
    assert rec.results == [COPY_BINARIES_FAILURE]


def test_kubeconfig_only_with_an_api_server(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("10-calico.conflist", CALICO)
    node.installer().install_all()
    assert not (node.run / "weir-cni-kubeconfig").exists()  # the embedded node has no API server
    installer = node.installer(k8s_service_host="10.96.0.1", k8s_service_port="443", kubeconfig_mode=0o640)
    installer.install_all()
    kubeconfig = node.run / "weir-cni-kubeconfig"
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o640
    doc = yaml.safe_load(kubeconfig.read_text())
    assert doc["users"][0]["user"]["token"] == "token-1"
    assert doc["clusters"][0]["cluster"]["server"] == "https://10.96.0.1:443"
    (node.sa / "token").write_text("token-2")  # rotation
    installer.install_all()
    assert yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"] == "token-2"
    installer.cleanup()
    assert not kubeconfig.exists()
    (node.sa / "token").unlink()
    with pytest.raises(InstallError) as info:
        installer.install_all()
    assert info.value.result == CREATE_KUBECONFIG_FAILURE


def test_waits_for_a_primary(tmp_path: Path) -> None:
    node = Node(tmp_path)
    installer = node.installer()
    started = time.monotonic()
    with pytest.raises(NoPrimaryConfig):
        installer.install_all(timeout=0.2)
    assert time.monotonic() - started < 3.0, "install_all gave up after its timeout"
    threading.Timer(0.2, lambda: node.write("10-calico.conflist", CALICO)).start()
    assert installer.install_all(timeout=5) == str(node.conf / "10-calico.conflist")


def test_stale_temp_files_are_removed(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("10-calico.conflist", CALICO)
    (node.conf / ".10-calico.conflist.weir-cni-k2j3h4.tmp").write_bytes(b"{")
    (node.conf / ".someone-elses.tmp").write_bytes(b"x")
    node.installer().install_all()
    assert node.listing() == [".someone-elses.tmp", "10-calico.conflist"]


def test_read_conf_dir_lists_like_libcni(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.write("10-calico.conflist", CALICO)
    node.write("k8s-pod-network/x.conf", b'{"type": "x"}')
    node.write("k8s-pod-network/notes.txt", b"hi")
    node.write("calico-kubeconfig", b"secret")
    (node.conf / "sub.conf").mkdir()
    (node.conf / "link.conf").symlink_to(node.conf / "sub.conf")
    conf = read_conf_dir(str(node.conf), ["calico-kubeconfig"])
    assert sorted(conf.files) == ["10-calico.conflist", "calico-kubeconfig", "link.conf"]
    assert conf.files["link.conf"] is None  # a symlink to a directory is a file libcni cannot read
    assert conf.dropins == {"k8s-pod-network": {"x.conf": b'{"type": "x"}'}}
    assert read_conf_dir(str(tmp_path / "absent")) == ConfDir()


def test_plan_error_when_primary_unparseable(tmp_path: Path) -> None:
    conf = ConfDir({"a.conf": b"{bad"})
    with pytest.raises((PlanError, ConfError)):
        plan_config(conf, InstallConfig(conf_name="a.conf"))
    assert plan_config(conf, InstallConfig()) is None  # unpinned: an invalid file is no primary


def test_readiness_follows_the_loop(tmp_path: Path) -> None:
    node = Node(tmp_path)
    primary = node.write("10-calico.conflist", CALICO)
    rec = Recorder()
    installer = node.installer(observers=[rec])
    stop = threading.Event()
    thread = threading.Thread(target=installer.run, args=(stop,))
    thread.start()
    try:
        assert installer.wait_ready(5)
        assert installer.config_path == str(primary)
        primary.write_bytes(CALICO)  # someone reverts weir's entry
        deadline = time.monotonic() + 3
        while entry_of(primary) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert entry_of(primary) is not None
        assert installer.wait_ready(3)
    finally:
        stop.set()
        thread.join(5)
    assert not installer.ready
    assert installer.not_ready_reason == "stopped"
    assert rec.readiness[0] is True
    assert False in rec.readiness
    assert rec.results.count(SUCCESS) >= 2
    installer.cleanup()
    assert primary.read_bytes() == CALICO
