"""`weir up` / `status` / `down` at the command line: bad input stops before anything is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from weir.cli.main import main


@pytest.mark.parametrize(("flags", "message"), [
    (["--subnet", "10.0.0.0/33"], "--subnet: invalid value '10.0.0.0/33'"),
    (["--subnet", "fd00::/64"], "--subnet: fd00::/64 must be an IPv4 network"),
    (["--bridge", "bad/name"], "--bridge: invalid name 'bad/name'"),
    (["--cacerts", "/nonexistent/cacerts"], "--cacerts: /nonexistent/cacerts is not a directory"),
    (["--workload-cert-ttl", "5s"], "--workload-cert-ttl: '5s' is shorter than 10s"),
    (["--workload-cert-ttl", "soon"], "--workload-cert-ttl: 'soon' is not a duration"),
    (["--timeout", "0"], "--timeout: 0 must be more than 0"),
])
def test_bad_flags_exit_2_naming_the_flag_and_make_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           flags: list[str], message: str) -> None:
    root = tmp_path / "root"
    assert main(["up", "--root", str(root), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not root.exists()


def test_a_bad_manifest_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "svc.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n")
    root = tmp_path / "root"
    assert main(["up", str(bad), "--root", str(root)]) == 2
    assert "spec.ports[0].port" in capsys.readouterr().err
    assert not root.exists()


def test_status_and_down_without_a_mesh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--root", str(tmp_path)]) == 1
    assert "no mesh is up on this node" in capsys.readouterr().err
    assert main(["down", "--root", str(tmp_path)]) == 0
    assert "nothing to remove" in capsys.readouterr().err
