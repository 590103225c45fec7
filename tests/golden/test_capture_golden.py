"""Golden tier: weir's capture rules against Istio's own expected-output files.

Every case in ``cases.json`` runs, with its id taken from the data (``suite/name``); the files
are read in place from the shared golden directory. The goldens are Istio's, so there is no
switch to regenerate them: a difference is a bug in weir, never a reason to update the file.
Each case is checked twice: through the library (spec parser + renderer) and through
``weir capture render`` with the inputs written as JSON and as YAML.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import GOLDEN
from weir.capture import iptables, nftables
from weir.capture.config import spec_from_config
from weir.capture.pod import spec_from_pod
from weir.cli.main import main

IPTABLES = "istio-iptables-capture"
NFTABLES = "istio-nftables-capture"
CNI = "cni-plugin-sidecar"
SUITES = (IPTABLES, NFTABLES, CNI)
SAVE_PROBES = ("iptables-save", "ip6tables-save")

Case = dict[str, Any]


def _load_cases() -> list[Case]:
    path = GOLDEN / "cases.json"
    if not path.exists():
        return []  # the golden_dir fixture skips (or fails under CI) with the reason
    cases: list[Case] = json.loads(path.read_text(encoding="utf-8"))
    return cases


CASES = _load_cases()


def cases_of(*suites: str) -> list[Any]:
    """The cases of ``suites`` as pytest params; one placeholder when the data is missing."""
    params = [pytest.param(c, id=f"{c['suite']}/{c['name']}") for c in CASES if c["suite"] in suites]
    return params or [pytest.param(None, id="golden-data-missing")]


# ---- helpers -------------------------------------------------------------------------------------


def assert_same_text(golden: str, actual: str, what: str) -> None:
    """Compare after trimming surrounding white space (as Istio does); fail with a unified diff."""
    expected, got = golden.strip(), actual.strip()
    if expected != got:
        diff = "\n".join(difflib.unified_diff(expected.splitlines(), got.splitlines(),
                                              "golden (Istio)", "weir", lineterm=""))
        pytest.fail(f"{what} differs from the golden:\n{diff}", pytrace=False)


def golden_text(golden_dir: Path, case: Case) -> str:
    relpath: str = case["golden_file_relpath"]
    return (golden_dir / relpath).read_text(encoding="utf-8")


def restore_stdin(golden: str) -> str:
    """The iptables-restore input of a capture golden: the save probes dropped, v4 then v6."""
    return "\n".join(line for line in golden.splitlines() if line.strip() not in SAVE_PROBES)


def wants_ipv6(case: Case) -> bool:
    """Istio's harness records the IPv6 restore input when EnableIPv6 is set."""
    flag = case["inputs_env_style"].get("ENABLE_INBOUND_IPV6", False)
    assert isinstance(flag, bool), f"unexpected ENABLE_INBOUND_IPV6 in the case data: {flag!r}"
    return flag


def pod_manifest(case: Case, *, with_status: bool = False) -> dict[str, Any]:
    """A Pod manifest built from a cni-plugin-sidecar case's ``inputs.pod``."""
    pod = case["inputs"]["pod"]
    containers: list[dict[str, Any]] = []
    for name in pod["containers"]:
        container: dict[str, Any] = {"name": name}
        if name == "istio-proxy":
            container["env"] = pod["istio_proxy_env"]
            container["securityContext"] = pod["istio_proxy_securityContext"]
        containers.append(container)
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod["name"], "namespace": pod["namespace"], "annotations": pod["annotations"]},
        "spec": {"containers": containers},
    }
    if with_status:  # the CLI has no CNI prevResult: the pod's addresses come from its status
        ips = [str(ipaddress.ip_interface(ip).ip) for ip in case["inputs"]["cni_stdin_conf"]["prevResult_ips"]]
        manifest["status"] = {"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}
    return manifest


WRITERS: dict[str, Callable[[Any], str]] = {
    "json": lambda doc: json.dumps(doc, indent=2),
    "yaml": lambda doc: yaml.safe_dump(doc, sort_keys=False),
}


def render_cli(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["capture", "render", *args])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), f"weir capture render {' '.join(args)} failed: {err}"
    return out


@pytest.fixture
def case(request: pytest.FixtureRequest, golden_dir: Path) -> Case:
    """The parametrized case; requesting golden_dir skips (or fails in CI) when data is missing."""
    param: Case = request.param
    return param


# ---- the data itself -----------------------------------------------------------------------------


def test_every_case_belongs_to_a_suite_tested_here(golden_dir: Path) -> None:
    unknown = sorted({c["suite"] for c in CASES} - set(SUITES))
    assert CASES, "cases.json holds no cases"
    assert not unknown, f"cases.json has suites this module does not test: {unknown}"


def test_case_ids_are_unique(golden_dir: Path) -> None:
    ids = [f"{c['suite']}/{c['name']}" for c in CASES]
    assert len(ids) == len(set(ids))


# ---- istio-iptables-capture ----------------------------------------------------------------------


@pytest.mark.parametrize("case", cases_of(IPTABLES), indirect=True)
def test_iptables_capture(case: Case, golden_dir: Path) -> None:
    spec = spec_from_config(case["inputs_env_style"])
    rendered = iptables.render(spec, 4) + (iptables.render(spec, 6) if wants_ipv6(case) else "")
    assert_same_text(restore_stdin(golden_text(golden_dir, case)), rendered, "iptables-restore input (v4, v6)")


@pytest.mark.parametrize("case", cases_of(IPTABLES, NFTABLES), indirect=True)
def test_istio_field_names_give_the_same_spec(case: Case) -> None:
    assert spec_from_config(case["inputs"]) == spec_from_config(case["inputs_env_style"])


@pytest.mark.parametrize("case", cases_of(IPTABLES), indirect=True)
def test_no_ipv6_rules_unless_ipv6_is_enabled(case: Case) -> None:
    spec = spec_from_config(case["inputs_env_style"])
    assert (iptables.render(spec, 6) != "") == wants_ipv6(case)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("case", cases_of(IPTABLES), indirect=True)
def test_iptables_capture_cli(case: Case, fmt: str, golden_dir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"capture.{fmt}"
    path.write_text(WRITERS[fmt](case["inputs_env_style"]), encoding="utf-8")
    out = render_cli(capsys, "--config", str(path))
    out6 = render_cli(capsys, "--config", str(path), "--backend", "iptables", "--family", "6")
    assert (out6 != "") == wants_ipv6(case)
    assert_same_text(restore_stdin(golden_text(golden_dir, case)), out + out6, f"weir capture render ({fmt})")


# ---- istio-nftables-capture ----------------------------------------------------------------------


@pytest.mark.parametrize("case", cases_of(NFTABLES), indirect=True)
def test_nftables_capture(case: Case, golden_dir: Path) -> None:
    spec = spec_from_config(case["inputs_env_style"])
    assert_same_text(golden_text(golden_dir, case), nftables.render(spec), "nft -f script")


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("case", cases_of(NFTABLES), indirect=True)
def test_nftables_capture_cli(case: Case, fmt: str, golden_dir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"capture.{fmt}"
    path.write_text(WRITERS[fmt](case["inputs"]), encoding="utf-8")  # Istio field names this time
    out = render_cli(capsys, "--config", str(path), "--backend", "nftables")
    assert_same_text(golden_text(golden_dir, case), out, f"weir capture render --backend nftables ({fmt})")


# ---- cni-plugin-sidecar --------------------------------------------------------------------------


def per_table(text: str) -> list[str]:
    """Split restore text on COMMIT, as Istio's CNI test does, one entry per table."""
    return [part.strip() for part in text.strip().split("COMMIT") if part.strip()]


@pytest.mark.parametrize("case", cases_of(CNI), indirect=True)
def test_cni_plugin_sidecar(case: Case, golden_dir: Path) -> None:
    spec = spec_from_pod(pod_manifest(case), case["inputs"]["cni_stdin_conf"]["prevResult_ips"])
    golden, rendered = golden_text(golden_dir, case), iptables.render(spec, 4)
    if per_table(rendered) != per_table(golden):
        assert_same_text(golden, rendered, "CNI plugin rules (IPv4)")


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("case", cases_of(CNI), indirect=True)
def test_cni_plugin_sidecar_cli(case: Case, fmt: str, golden_dir: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"pod.{fmt}"
    path.write_text(WRITERS[fmt](pod_manifest(case, with_status=True)), encoding="utf-8")
    out = render_cli(capsys, "--pod", str(path))
    assert_same_text(golden_text(golden_dir, case), out, f"weir capture render --pod ({fmt})")
