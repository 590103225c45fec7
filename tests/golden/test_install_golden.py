"""Golden tier: weir's installer against Istio's installer cases (``install/install_cases.json``).

Every case runs, with its id from the data (``<Istio test>/<case name>``). Files are read in place
from the shared golden directory and compared byte for byte; expected errors must be errors. The
pure functions get Istio's names and values through :data:`ISTIO` (plugin type ``istio-cni``,
``YYY-istio-cni.conf``, Istio's kubeconfig names, and Istio's cleanup of a converted ``.conf``).

How each Istio function maps onto weir:

- ``insertCNIConfig`` -> ``insert_entry``; ``createCNIConfigFile`` -> ``plan_config`` (``None``:
  it would wait, Istio's DeadlineExceeded); ``checkValidCNIConfig`` -> ``check_config`` with
  presence-only checking (Istio's, ``desired=None``); ``getConfigFilenames`` -> ``valid_configs``;
  ``getCNIConfigFilepath`` -> ``resolve_primary`` (``None``: it would wait, context.Canceled);
  ``createKubeConfig`` -> ``render_kubeconfig``.
- ``Installer.Cleanup`` and the whole installer (``TestInstall``) run through weir's driver on
  temp directories, as Istio's tests run its installer.
- Istio's ``TestGetConfigFilenames`` cases share one directory in order; they do here too.
"""

from __future__ import annotations

import difflib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GOLDEN
from weir.nodeagent.install import Flavor, InstallConfig, KubeconfigError, PluginEntry, plan_config, render_kubeconfig
from weir.nodeagent.installconf import (
    ConfDir,
    ConfError,
    check_config,
    insert_entry,
    parse_object,
    remove_entry,
    resolve_primary,
    valid_configs,
)
from weir.nodeagent.installer import Installer

ISTIO = Flavor(plugin_type="istio-cni", standalone_name="YYY-istio-cni.conf", kubeconfig_name="istio-cni-kubeconfig",
               kubeconfig_user="istio-cni", kubeconfig_context="istio-cni-context", restore_converted_conf=False)
ISTIO_OWNED_DEFAULT = "02-istio-cni.conflist"
TOKEN = "service_account_token_string"

Case = dict[str, Any]


def _load_cases() -> list[Case]:
    path = GOLDEN / "install" / "install_cases.json"
    if not path.exists():
        return []  # the golden_dir fixture skips (or fails under CI) with the reason
    cases: list[Case] = json.loads(path.read_text(encoding="utf-8"))
    return cases


CASES = _load_cases()


def cases_of(*tests: str) -> list[Any]:
    params = [pytest.param(c, id=f"{c['test']}/{c['name']}") for c in CASES if c["test"] in tests]
    return params or [pytest.param(None, id="golden-data-missing")]


def test_every_case_has_a_runner() -> None:
    """No case of the data is left out: each Istio test name has a test function here."""
    known = {"TestInsertCNIConfig", "TestCreateCNIConfigFile", "TestCheckInstall", "TestCleanup",
             "TestCreateValidKubeconfigFile", "TestReplaceInvalidKubeconfigFile", "TestGetConfigFilenames",
             "TestGetCNIConfigFilepath", "TestInstall"}
    assert {c["test"] for c in CASES} <= known


# ---- helpers -------------------------------------------------------------------------------------


def install_dir(golden_dir: Path) -> Path:
    return golden_dir / "install"


def read(golden_dir: Path, rel: str) -> bytes:
    return (install_dir(golden_dir) / rel).read_bytes()


def assert_same_bytes(expected: bytes, actual: bytes, what: str) -> None:
    if expected != actual:
        diff = "\n".join(difflib.unified_diff(expected.decode(errors="replace").splitlines(),
                                              actual.decode(errors="replace").splitlines(),
                                              "golden (Istio)", "weir", lineterm=""))
        pytest.fail(f"{what} differs from the golden:\n{diff}", pytrace=False)


def istio_config(ic: Case, **override: Any) -> InstallConfig:
    """Istio's InstallConfig fields as weir's. Istio's owned config takes effect only when
    ambient and chained are both on; weir has no ambient switch, so that gate lives here."""
    owned = bool(ic.get("IstioOwnedCNIConfig")) and bool(ic.get("AmbientEnabled"))
    excluded = tuple(n for n in str(ic.get("ExcludeNamespaces", "")).split(",") if n)
    fields: dict[str, Any] = {
        "conf_name": ic.get("CNIConfName", ""), "chained": ic.get("ChainedCNIPlugin", True), "owned": owned,
        "owned_filename": ic.get("IstioOwnedCNIConfigFilename") or ISTIO_OWNED_DEFAULT,
        "run_dir": ic.get("CNIAgentRunDir", "/var/run/istio-cni"), "plugin_log_level": ic.get("PluginLogLevel", "info"),
        "pod_namespace": ic.get("PodNamespace", ""), "exclude_namespaces": excluded,
        "native_nftables": bool(ic.get("NativeNftables", False)),
    }
    fields.update(override)
    return InstallConfig(**fields)


def istio_entry(ic: Case) -> PluginEntry:
    config = istio_config(ic)
    assert not ic.get("AmbientEnablementSelector"), "selectors are not modelled; no case sets them"
    return PluginEntry(plugin_log_level=config.plugin_log_level, cni_agent_run_dir=config.run_dir,
                       exclude_namespaces=config.exclude_namespaces, pod_namespace=config.pod_namespace,
                       native_nftables=config.native_nftables, ambient_enabled=bool(ic.get("AmbientEnabled")),
                       enable_ambient_detection_retry=bool(ic.get("EnableAmbientDetectionRetry")))


def conf_dir_of(golden_dir: Path, src_to_target: dict[str, str]) -> ConfDir:
    return ConfDir({target: read(golden_dir, src) for src, target in src_to_target.items()})


# ---- pure functions --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases_of("TestInsertCNIConfig"))
def test_insert_cni_config(golden_dir: Path, case: Case) -> None:
    existing = read(golden_dir, case["inputs"]["existing"])
    new_plugin = read(golden_dir, case["inputs"]["new_plugin"])
    if case["expect_error"]:
        with pytest.raises(ConfError):
            insert_entry(existing, parse_object(new_plugin, "new plugin"), ISTIO.plugin_type)
        return
    got = insert_entry(existing, parse_object(new_plugin, "new plugin"), ISTIO.plugin_type)
    assert_same_bytes(read(golden_dir, case["expected_output"]), got, case["expected_output"])


@pytest.mark.parametrize("case", cases_of("TestCreateCNIConfigFile"))
def test_create_cni_config_file(golden_dir: Path, case: Case) -> None:
    ic = case["inputs"]["install_config"]
    conf = conf_dir_of(golden_dir, case["inputs"]["existing_files_src_to_target"])
    plan = plan_config(conf, istio_config(ic), ISTIO, istio_entry(ic))
    if case["expected_result_filename"] is None:
        assert plan is None, "Istio waits for a primary config (DeadlineExceeded); weir's plan must wait too"
        return
    assert plan is not None
    after = {name: data for name, data in conf.files.items() if name not in plan.removes}
    after.update({w.path: w.data for w in plan.writes})
    name = case["expected_result_filename"]
    assert plan.target == name
    assert name in after, f"{name} not written; the dir would hold {sorted(after)}"
    assert_same_bytes(read(golden_dir, case["expected_output"]), after[name], name)
    for other, data in conf.files.items():  # anything else is left alone (the owned copy: the primary too)
        if other not in plan.removes and other != name:
            assert after[other] == data


@pytest.mark.parametrize("case", cases_of("TestCheckInstall"))
def test_check_install(golden_dir: Path, case: Case) -> None:
    ic = case["inputs"]["install_config"]
    config = istio_config(ic)
    conf = conf_dir_of(golden_dir, case["inputs"]["existing_files_src_to_target"])
    verdict = check_config(conf, mode=config.mode, target=case["inputs"]["cniConfigFilename"],
                           plugin_type=ISTIO.plugin_type, conf_name=config.conf_name,
                           owned_filename=config.owned_filename)
    assert (not verdict.ok) == case["expect_error"], verdict


@pytest.mark.parametrize("case", cases_of("TestCreateValidKubeconfigFile", "TestReplaceInvalidKubeconfigFile"))
def test_kubeconfig(golden_dir: Path, case: Case) -> None:
    inputs = case["inputs"]
    render: Callable[[], str] = lambda: render_kubeconfig(  # noqa: E731
        host=inputs["K8sServiceHost"], port=inputs["K8sServicePort"],
        token=inputs["serviceaccount_token_file_content"],
        ca_data=read(golden_dir, inputs["KubeCAFile"]) if inputs["KubeCAFile"] else None,
        skip_tls_verify=bool(inputs.get("SkipTLSVerify", False)),
        user=ISTIO.kubeconfig_user, context=ISTIO.kubeconfig_context)
    if case["expect_error"]:
        with pytest.raises(KubeconfigError):
            render()
        return
    assert_same_bytes(read(golden_dir, case["expected_output"]), render().encode(), case["expected_output"])


@pytest.mark.parametrize("case", cases_of("TestGetConfigFilenames"))
def test_get_config_filenames(golden_dir: Path, case: Case) -> None:
    files: dict[str, bytes] = {}
    group = [c for c in CASES if c["test"] == case["test"]]
    for earlier in group[: group.index(case) + 1]:  # Istio's cases fill one directory in turn
        name, content = earlier["inputs"]["file"], earlier["inputs"]["content"]
        if name and content == "istio-cni conf JSON":
            files[name] = read(golden_dir, "unit/istio-cni.conf")
    valid = valid_configs(ConfDir(files))
    if case["expect_error"]:
        assert valid == []
    else:
        assert valid[0] == case["expected_first"]


@pytest.mark.parametrize("case", cases_of("TestGetCNIConfigFilepath"))
def test_get_cni_config_filepath(golden_dir: Path, case: Case) -> None:
    inputs = case["inputs"]
    files = {os.path.basename(src): read(golden_dir, src) for src in inputs["existing"]}
    if not inputs["chained"]:
        plan = plan_config(ConfDir(files), InstallConfig(conf_name=inputs["cniConfName"], chained=False), ISTIO)
        assert plan is not None
        assert plan.target == case["expected"]
        return
    got = resolve_primary(ConfDir(files), inputs["cniConfName"])
    if inputs["delayed_write_after_250ms"]:
        assert got is None, "the file does not exist yet: Istio waits"
        delayed = inputs["delayed_write_after_250ms"]
        files[os.path.basename(delayed)] = read(golden_dir, delayed)
        got = resolve_primary(ConfDir(files), inputs["cniConfName"])
    if case["expected"] == "context.Canceled":
        assert got is None, "Istio waits until cancelled; weir must wait too"
    else:
        assert got == case["expected"]


# ---- the driver --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases_of("TestCleanup"))
def test_cleanup(golden_dir: Path, tmp_path: Path, case: Case) -> None:
    inputs = case["inputs"]
    conf, bins, run = tmp_path / "net.d", tmp_path / "bin", tmp_path / "run"
    for d in (conf, bins, run):
        d.mkdir()
    name = inputs["config_file_name"]
    (conf / name).write_bytes(read(golden_dir, inputs["existing"]))
    for binary in inputs["bin_dir_contains"]:
        (bins / binary).write_bytes(b"")
    if inputs["kubeconfig_present"]:
        (run / ISTIO.kubeconfig_name).write_text("kubeconfig")
    owned = bool(inputs["IstioOwnedCNIConfig"])
    config = InstallConfig(conf_dir=str(conf), chained=inputs["ChainedCNIPlugin"], owned=owned,
                           owned_filename=name if owned else ISTIO_OWNED_DEFAULT, conf_name="" if owned else name,
                           bin_dirs=(str(bins),), run_dir=str(run))
    Installer(config, flavor=ISTIO).cleanup()
    if case["expected_output"]:
        assert_same_bytes(read(golden_dir, case["expected_output"]), (conf / name).read_bytes(), name)
    else:
        assert not (conf / name).exists(), "config file deleted"
    assert not (run / ISTIO.kubeconfig_name).exists(), "kubeconfig deleted"
    assert not (bins / ISTIO.plugin_type).exists(), "<bindir>/istio-cni deleted"


def _wait_until(what: str, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.01)


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@pytest.mark.parametrize("case", cases_of("TestInstall"))
def test_install(golden_dir: Path, tmp_path: Path, case: Case) -> None:
    inputs, ic = case["inputs"], case["inputs"]["install_config"]
    conf, bins, sa, run = (tmp_path / d for d in ("net.d", "bin", "svcacct", "run"))
    for d in (conf, bins, sa, run):
        d.mkdir()
    for i, src in enumerate(inputs["cni_conf_dir_files_in_order"]):
        (conf / f"0{i}-{os.path.basename(src)}").write_bytes(read(golden_dir, src))
    accounts = install_dir(golden_dir) / "k8s_install" / "k8s_svcacct"
    for f in accounts.iterdir():
        (sa / f.name.removesuffix(".PLACEHOLDER")).write_bytes(f.read_bytes())
    plugin = tmp_path / "istio-cni"  # Istio's test binaries are empty files
    plugin.write_bytes(b"")
    config = InstallConfig(
        conf_dir=str(conf), conf_name=inputs["CNIConfName"], chained=inputs["ChainedCNIPlugin"],
        bin_dirs=(str(bins),), run_dir=ic["CNIAgentRunDir"], k8s_service_host=ic["K8sServiceHost"],
        k8s_service_port=ic["K8sServicePort"], plugin_log_level=ic["PluginLogLevel"],
        exclude_namespaces=tuple(ic["ExcludeNamespaces"].split(",")), kubeconfig_mode=int(ic["KubeconfigMode"], 8),
        service_account_dir=str(sa))
    installer = Installer(config, flavor=ISTIO, plugin_file=str(plugin), run_dir=str(run))
    result = conf / case["expected_result_file"]
    expected = read(golden_dir, case["expected_output"])
    stop = threading.Event()
    thread = threading.Thread(target=installer.run, args=(stop,), name="installer")
    thread.start()
    try:
        if inputs["delayed_conf_file"]:
            time.sleep(0.25)
            assert _content(result) != expected, "the installer must wait for the delayed config"
            dest = inputs["CNIConfName"] or case["expected_result_file"]
            (conf / dest).write_bytes(read(golden_dir, inputs["delayed_conf_file"]))
        _wait_until(f"{result.name} to match {case['expected_output']}", lambda: _content(result) == expected)
        assert (bins / ISTIO.plugin_type).exists(), "istio-cni binary appears in bin dir"
        # the installer puts its config back after someone removes it
        if config.chained:
            stripped = remove_entry(result.read_bytes(), ISTIO.plugin_type)
            assert stripped is not None
            tmp = conf / "rm.tmp"
            tmp.write_bytes(stripped)
            tmp.replace(result)
        else:
            result.unlink()
        _wait_until(f"{result.name} restored", lambda: _content(result) == expected)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    installer.cleanup()
    if config.chained:
        after = read(golden_dir, case["expected_after_cleanup"])
        assert_same_bytes(after, result.read_bytes(), f"{result.name} after cleanup")
    else:
        assert not result.exists(), "file removed (standalone)"
    assert not (bins / ISTIO.plugin_type).exists(), "after shutdown istio-cni binary removed"
    assert not [n for n in os.listdir(conf) if ".tmp" in n], "no *.tmp files left in conf dir"
