"""``weir capture render`` and the CLI's handling of bad input (weir.cli), run in-process."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from weir.capture import iptables, nftables
from weir.capture.config import spec_from_config
from weir.capture.pod import spec_from_pod
from weir.cli.main import main

Capsys = pytest.CaptureFixture[str]

CONFIG: dict[str, Any] = {
    "INBOUND_PORTS_INCLUDE": "*",
    "INBOUND_PORTS_EXCLUDE": "15020,15021,15090",
    "OUTBOUND_IPRANGES_INCLUDE": "*",
    "OUTBOUND_IPRANGES_EXCLUDE": "10.96.0.0/12",
    "REDIRECT_DNS": True,
    "CAPTURE_ALL_DNS": True,
}

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web", "namespace": "shop", "annotations": {
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.0/12",
        "traffic.sidecar.istio.io/excludeInboundPorts": "3306",
        "sidecar.istio.io/interceptionMode": "TPROXY",
    }},
    "spec": {"containers": [
        {"name": "web", "image": "web:1"},
        {"name": "istio-proxy", "image": "proxyv2", "securityContext": {"runAsUser": 1500, "runAsGroup": 1501},
         "env": [{"name": "ISTIO_META_DNS_CAPTURE", "value": "true"}]},
    ]},
    "status": {"podIP": "10.1.2.3", "podIPs": [{"ip": "10.1.2.3"}]},
}


def run(argv: list[str], capsys: Capsys) -> tuple[int, str, str]:
    """Run ``weir`` in-process; argparse's exits count as return codes."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def assert_usage_error(result: tuple[int, str, str], *names: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr that names everything in ``names``."""
    code, out, err = result
    assert code == 2, err
    assert out == ""
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    for name in names:
        assert name in err, f"{name!r} not named in: {err}"
    return err


# ---- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "words"), [
    (["--help"], ["usage: weir", "capture"]),
    (["capture", "--help"], ["usage: weir capture", "render", "apply", "check", "remove", "validate"]),
    (["capture", "render", "--help"], ["usage: weir capture render", "--config", "--pod", "--backend", "--family",
                                       "INBOUND_PORTS_INCLUDE", "traffic.sidecar.istio.io"]),
])
def test_help_exits_0(argv: list[str], words: list[str], capsys: Capsys) -> None:
    code, out, err = run(argv, capsys)
    assert (code, err) == (0, "")
    for word in words:
        assert word in out


# ---- render --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dump", [yaml.safe_dump, json.dumps], ids=["yaml", "json"])
def test_render_from_a_pod_manifest(dump: Callable[[Any], str], tmp_path: Path, capsys: Capsys) -> None:
    path = write(tmp_path, "pod.yaml", dump(POD))
    code, out, err = run(["capture", "render", "--pod", path], capsys)
    assert (code, err) == (0, "")
    assert out == iptables.render(spec_from_pod(POD), 4)
    assert "--uid-owner 1500" in out
    assert "TPROXY" in out


def test_render_pod_with_nftables(tmp_path: Path, capsys: Capsys) -> None:
    path = write(tmp_path, "pod.yaml", yaml.safe_dump(POD))
    code, out, err = run(["capture", "render", "--pod", path, "--backend", "nftables"], capsys)
    assert (code, err) == (0, "")
    assert out == nftables.render(spec_from_pod(POD))
    assert out.startswith("add table inet istio-proxy-nat\n")


def test_render_from_a_config_defaults_to_iptables_ipv4(tmp_path: Path, capsys: Capsys) -> None:
    path = write(tmp_path, "capture.yaml", yaml.safe_dump(CONFIG))
    code, out, err = run(["capture", "render", "--config", path], capsys)
    assert (code, err) == (0, "")
    assert out == iptables.render(spec_from_config(CONFIG), 4)
    assert out.startswith("* nat\n")


def test_family_6_with_ipv6_off_prints_nothing(tmp_path: Path, capsys: Capsys) -> None:
    path = write(tmp_path, "capture.json", json.dumps(CONFIG))
    assert run(["capture", "render", "--config", path, "--family", "6"], capsys) == (0, "", "")


def test_family_6_with_ipv6_on(tmp_path: Path, capsys: Capsys) -> None:
    config = {**CONFIG, "ENABLE_INBOUND_IPV6": True}
    path = write(tmp_path, "capture.json", json.dumps(config))
    code, out, err = run(["capture", "render", "--config", path, "--family", "6"], capsys)
    assert (code, err) == (0, "")
    assert out == iptables.render(spec_from_config(config), 6)
    assert "::1/128" in out


def test_render_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: Capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(CONFIG)))
    code, out, err = run(["capture", "render", "--config", "-", "--backend", "nftables"], capsys)
    assert (code, err) == (0, "")
    assert out == nftables.render(spec_from_config(CONFIG))


def test_interception_mode_none_renders_nothing(tmp_path: Path, capsys: Capsys) -> None:
    path = write(tmp_path, "capture.json", json.dumps({**CONFIG, "INBOUND_INTERCEPTION_MODE": "NONE"}))
    assert run(["capture", "render", "--config", path], capsys) == (0, "", "")


# ---- bad files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["--config", "--pod"])
def test_missing_file(source: str, tmp_path: Path, capsys: Capsys) -> None:
    path = str(tmp_path / "nope.yaml")
    assert_usage_error(run(["capture", "render", source, path], capsys), path, "No such file")


def test_directory(tmp_path: Path, capsys: Capsys) -> None:
    assert_usage_error(run(["capture", "render", "--config", str(tmp_path)], capsys), str(tmp_path), "directory")


@pytest.mark.parametrize(("name", "content", "words"), [
    ("bad.json", '{"PROXY_UID": "1",\n  "PROXY_GID": }', ["invalid JSON at line 2"]),
    ("bad.json", "[1, 2", ["invalid JSON"]),
    ("bad.yaml", "PROXY_UID: [1,\n", ["invalid YAML at line"]),
    ("bad.yaml", "a: b\n c: d\n", ["invalid YAML at line 2"]),
    ("bad.yaml", "\t- x\n", ["invalid YAML"]),
    ("empty.yaml", "", ["the file is empty"]),
    ("blank.yaml", "\n  \n# just a comment\n", ["the file is empty"]),
    ("null.yaml", "---\n...\n", ["the file is empty"]),
    ("two.yaml", "PROXY_UID: '1'\n---\nPROXY_GID: '2'\n", ["expected one document, found 2"]),
    ("dup.yaml", "PROXY_UID: '1'\nPROXY_UID: '2'\n", ["duplicate key", "PROXY_UID"]),
    ("dup.json", '{"PROXY_UID": "1", "PROXY_UID": "2"}', ["duplicate key", "PROXY_UID"]),
    ("latin1.yaml", b"PROXY_UID: '\xe9'\n", ["not a UTF-8 text file"]),
])
@pytest.mark.parametrize("source", ["--config", "--pod"])
def test_malformed_files(source: str, name: str, content: str | bytes, words: list[str], tmp_path: Path,
                         capsys: Capsys) -> None:
    path = write(tmp_path, name, content)
    assert_usage_error(run(["capture", "render", source, path], capsys), path, *words)


@pytest.mark.parametrize("content", ["- PROXY_UID\n- PROXY_GID\n", '["PROXY_UID"]', "just a string\n", "42\n"])
def test_config_must_be_a_mapping(content: str, tmp_path: Path, capsys: Capsys) -> None:
    path = write(tmp_path, "capture.yaml", content)
    assert_usage_error(run(["capture", "render", "--config", path], capsys), path, "expected a mapping")


@pytest.mark.parametrize("content", ["- kind: Pod\n", '["Pod"]', "Pod\n"])
def test_pod_must_be_a_mapping(content: str, tmp_path: Path, capsys: Capsys) -> None:
    path = write(tmp_path, "pod.yaml", content)
    assert_usage_error(run(["capture", "render", "--pod", path], capsys), path, "Pod manifest")


# ---- bad values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "names"), [
    ({"INBOUND_PORT_INCLUDE": "80"}, ["INBOUND_PORT_INCLUDE", "unknown key"]),
    ({"PROXY_UID": "1", "ProxyUID": "2"}, ["ProxyUID", "given twice", "PROXY_UID"]),
    ({"PROXY_PORT": 70000}, ["PROXY_PORT", "70000"]),
    ({"INBOUND_PORTS_INCLUDE": "0"}, ["INBOUND_PORTS_INCLUDE", "'0'"]),
    ({"INBOUND_PORTS_INCLUDE": "abc"}, ["INBOUND_PORTS_INCLUDE", "'abc'"]),
    ({"INBOUND_PORTS_INCLUDE": "80,*"}, ["INBOUND_PORTS_INCLUDE", "'80,*'"]),
    ({"INBOUND_PORTS_EXCLUDE": "*"}, ["INBOUND_PORTS_EXCLUDE", "'*'"]),
    ({"OUTBOUND_IPRANGES_INCLUDE": "10.0.0.0/33"}, ["OUTBOUND_IPRANGES_INCLUDE", "'10.0.0.0/33'"]),
    ({"OUTBOUND_IPRANGES_EXCLUDE": "10.0.0.1"}, ["OUTBOUND_IPRANGES_EXCLUDE", "'10.0.0.1'", "prefix length"]),
    ({"INBOUND_INTERCEPTION_MODE": "redirect"}, ["INBOUND_INTERCEPTION_MODE", "'redirect'"]),
    ({"EXCLUDE_INTERFACES": "eth0/1"}, ["EXCLUDE_INTERFACES", "'eth0/1'"]),
    ({"HOST_IPV4_LOOPBACK_CIDR": "10.0.0.1/32"}, ["HOST_IPV4_LOOPBACK_CIDR", "'10.0.0.1/32'"]),
    ({"OUTBOUND_OWNER_GROUPS_INCLUDE": "java", "OUTBOUND_OWNER_GROUPS_EXCLUDE": "nginx"},
     ["OUTBOUND_OWNER_GROUPS_EXCLUDE", "'nginx'", "only one of"]),
    ({"DNS_SERVERS_V4": ["fd00::a"]}, ["DNS_SERVERS_V4", "'fd00::a'"]),
    ({"REDIRECT_DNS": "yes"}, ["REDIRECT_DNS", "'yes'"]),
    ({"PROXY_PORT": "²"}, ["PROXY_PORT", "'²'"]),
])
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_bad_config_values(config: dict[str, Any], names: list[str], fmt: str, tmp_path: Path,
                           capsys: Capsys) -> None:
    text = json.dumps(config) if fmt == "json" else yaml.safe_dump(config, allow_unicode=True)
    path = write(tmp_path, f"capture.{fmt}", text)
    assert_usage_error(run(["capture", "render", "--config", path], capsys), path, *names)


def test_a_key_that_is_not_one_line_still_gives_one_line(tmp_path: Path, capsys: Capsys) -> None:
    path = write(tmp_path, "capture.json", json.dumps({"PROXY\nPORT": "1"}))
    assert_usage_error(run(["capture", "render", "--config", path], capsys), path, "'PROXY\\nPORT'")


@pytest.mark.parametrize(("change", "names"), [
    ({"metadata": {"annotations": {"sidecar.istio.io/interceptionMode": "NONE"}}},
     ["sidecar.istio.io/interceptionMode", "'NONE'"]),
    ({"metadata": {"annotations": {"traffic.sidecar.istio.io/excludeInboundPorts": "70000"}}},
     ["traffic.sidecar.istio.io/excludeInboundPorts", "'70000'"]),
    ({"metadata": {"annotations": {"traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/33"}}},
     ["traffic.sidecar.istio.io/includeOutboundIPRanges", "'10.0.0.0/33'"]),
    ({"metadata": {"annotations": {"traffic.sidecar.istio.io/excludeInboundPorts": 3306}}},
     ["traffic.sidecar.istio.io/excludeInboundPorts", "3306", "must be strings"]),
    ({"kind": "Deployment"}, ["kind", "'Deployment'"]),
    ({"status": {"podIP": "10.1.2.300"}}, ["pod IP", "'10.1.2.300'"]),
])
def test_bad_pod_values(change: dict[str, Any], names: list[str], tmp_path: Path, capsys: Capsys) -> None:
    pod = json.loads(json.dumps(POD))
    for key, value in change.items():
        if key == "metadata":
            pod["metadata"]["annotations"].update(value["annotations"])
        else:
            pod[key] = value
    path = write(tmp_path, "pod.yaml", yaml.safe_dump(pod))
    assert_usage_error(run(["capture", "render", "--pod", path], capsys), path, *names)


# ---- bad command lines ---------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "words"), [
    ([], ["weir", "required"]),
    (["capture"], ["weir capture", "required"]),
    (["capture", "render"], ["weir capture render", "--config", "--pod", "required"]),
    (["capture", "render", "--config", "a.yaml", "--pod", "b.yaml"], ["--pod", "not allowed with", "--config"]),
    (["capture", "render", "--config", "a.yaml", "--family", "5"], ["--family", "'5'"]),
    (["capture", "render", "--config", "a.yaml", "--backend", "iptables-nft"], ["--backend", "'iptables-nft'"]),
    (["capture", "render", "--config"], ["--config", "expected one argument"]),
    (["capture", "render", "--config", "a.yaml", "--bogus"], ["--bogus"]),
    (["capture", "frobnicate"], ["'frobnicate'"]),
    (["frobnicate"], ["'frobnicate'"]),
])
def test_bad_command_lines(argv: list[str], words: list[str], capsys: Capsys) -> None:
    err = assert_usage_error(run(argv, capsys), *words)
    assert err.startswith("weir")


def test_every_command_is_found_in_the_module_that_registers_it() -> None:
    from weir.cli import main as cli_main

    full = cli_main.build_parser()
    groups = next(a for a in full._actions if a.dest == "group")
    assert set(groups.choices) == set(cli_main.COMMANDS)  # type: ignore[arg-type]
    for command, module in cli_main.COMMANDS.items():
        alone = cli_main.build_parser(module)
        assert command in next(a for a in alone._actions if a.dest == "group").choices  # type: ignore[operator]
