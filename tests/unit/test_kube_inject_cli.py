"""`weir kube-inject`: manifests in, injected manifests out (other documents untouched)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from weir.api.pod import parse_pod
from weir.cli.main import main
from weir.nodeagent.decide import Capture, decide

MANIFESTS = """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80, name: http}], selector: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: web
    command: ["sleep", "infinity"]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: api
        image: example/api:1
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["kube-inject", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_embedded_pods_are_runnable_and_captured(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "app.yaml"
    source.write_text(MANIFESTS)
    code, out, err = run(capsys, "-f", str(source), "--flavor", "embedded")
    assert (code, err) == (0, "")
    service, pod, deployment = yaml.safe_load_all(out)
    assert service == yaml.safe_load(MANIFESTS.split("---", maxsplit=1)[0]), "other kinds pass through unchanged"
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["istio-validation", "istio-proxy"]
    assert pod["spec"]["initContainers"][0]["command"][:3] == ["weir", "capture", "validate"]
    parsed = parse_pod(pod, "injected")  # the embedded runtime accepts it: every container has a command
    assert parsed.container("istio-proxy") is not None
    assert isinstance(decide(pod), Capture), "weir-cni captures what the injector produced"
    template = deployment["spec"]["template"]
    assert "sidecar.istio.io/status" in template["metadata"]["annotations"]


def test_kubernetes_flavor_uses_images_and_the_validation_container(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "app.yaml"
    source.write_text(MANIFESTS)
    code, out, _ = run(capsys, "-f", str(source))
    assert code == 0
    pod = list(yaml.safe_load_all(out))[1]
    validation = pod["spec"]["initContainers"][0]
    assert validation["name"] == "istio-validation"
    assert "image" in validation
    assert "--run-validation" in validation["args"]
    assert validation["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_without_cni_kubernetes_gets_istio_init_and_embedded_refuses(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "app.yaml"
    source.write_text(MANIFESTS)
    code, out, _ = run(capsys, "-f", str(source), "--no-cni")
    assert code == 0
    init = list(yaml.safe_load_all(out))[1]["spec"]["initContainers"][0]
    assert init["name"] == "istio-init"
    assert set(init["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    code, out, err = run(capsys, "-f", str(source), "--no-cni", "--flavor", "embedded")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1
    assert "NET_ADMIN" in err


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "-f", str(tmp_path / "missing.yaml"))
    assert (code, out) == (2, "")
    assert "missing.yaml" in err
    assert err.count("\n") == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Pod\nmetadata: [unclosed\n")
    code, out, err = run(capsys, "-f", str(broken))
    assert (code, out) == (2, "")
    assert "invalid YAML" in err
