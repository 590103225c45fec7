"""weir.agent.proxy.config_from: the sidecar agent's settings from flags and Istio's environment
(``WEIR_POD_DIR`` defaults, ``PROXY_CONFIG``, ``SECRET_TTL``), resolv.conf's search list, and the
``weir proxy-agent`` command line (Istio's ``proxy sidecar`` form, the CA requirement)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from weir.agent import proxy
from weir.agent.bootstrap import TcpAddress, UnixAddress
from weir.agent.proxy import (
    DEFAULT_ROOT_CERT,
    DEFAULT_SDS_SOCKET,
    DEFAULT_TOKEN,
    DEFAULT_XDS_ADDRESS,
    SETTINGS,
    ConfigError,
    config_from,
    parse_duration,
    search_domains,
)
from weir.cli import proxyagent
from weir.cli.main import build_parser, main

POD = {"POD_NAME": "cart-1", "POD_NAMESPACE": "shop", "INSTANCE_IP": "10.213.0.7"}


def config(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> proxy.ProxyConfig:
    return config_from(flags or {}, {**POD, **(env or {})})


def error(flags: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        config(flags, env)
    return str(info.value)


def test_defaults_without_a_pod_dir() -> None:
    got = config()
    assert (got.pod_name, got.namespace, got.instance_ips) == ("cart-1", "shop", ("10.213.0.7",))
    assert got.token_file == DEFAULT_TOKEN
    assert got.ca_root_cert == DEFAULT_ROOT_CERT
    assert got.sds_socket == DEFAULT_SDS_SOCKET
    assert got.config_dir == proxy.DEFAULT_CONFIG_DIR
    assert got.xds_address == proxy.parse_address(DEFAULT_XDS_ADDRESS)
    assert got.cert_ttl == timedelta(hours=24)
    assert got.ca_address == ""


def test_the_pod_dir_places_token_bundle_bootstrap_and_sds() -> None:
    got = config(None, {"WEIR_POD_DIR": "/var/lib/weir/pods/uid-1"})
    assert got.token_file == Path("/var/lib/weir/pods/uid-1/token")
    assert got.ca_root_cert == Path("/var/lib/weir/pods/uid-1/root-cert.pem")
    assert got.config_dir == Path("/var/lib/weir/pods/uid-1/run/proxy")
    assert got.sds_socket == Path("/var/lib/weir/pods/uid-1/run/sds")


def test_explicit_settings_win_over_the_pod_dir() -> None:
    got = config({"token_file": "/flag/token", "sds_socket": None},
                 {"WEIR_POD_DIR": "/p", "WEIR_TOKEN_FILE": "/env/token", "WEIR_CA_ROOT_CERT": "/env/root.pem",
                  "WEIR_SDS_SOCKET": "/env/sds"})
    assert got.token_file == Path("/flag/token")  # the flag over the environment over the pod dir
    assert got.ca_root_cert == Path("/env/root.pem")
    assert got.sds_socket == Path("/env/sds")  # an unset flag (None) leaves the environment's
    assert got.config_dir == Path("/p/run/proxy")


def test_an_empty_setting_counts_as_unset() -> None:
    got = config({"token_file": ""}, {"WEIR_POD_DIR": "/p", "WEIR_TOKEN_FILE": ""})
    assert got.token_file == Path("/p/token")


def test_proxy_config_discovery_address_is_the_xds_address() -> None:
    istio = json.dumps({"discoveryAddress": "10.213.0.1:15010", "holdApplicationUntilProxyStarts": True})
    default = proxy.parse_address(DEFAULT_XDS_ADDRESS)
    assert config(None, {"PROXY_CONFIG": istio}).xds_address == TcpAddress("10.213.0.1", 15010)
    assert config(None, {"PROXY_CONFIG": json.dumps({"concurrency": 2})}).xds_address == default
    assert config(None, {"PROXY_CONFIG": ""}).xds_address == default


def test_xds_address_from_the_environment_or_a_flag_wins_over_proxy_config() -> None:
    istio = json.dumps({"discoveryAddress": "10.213.0.1:15010"})
    from_env = config(None, {"PROXY_CONFIG": istio, "XDS_ADDRESS": "unix:///run/xds.sock"})
    assert from_env.xds_address == UnixAddress("/run/xds.sock")
    from_flag = config({"xds_address": "127.0.0.1:9999"}, {"PROXY_CONFIG": istio, "XDS_ADDRESS": "10.0.0.1:1"})
    assert from_flag.xds_address == TcpAddress("127.0.0.1", 9999)


@pytest.mark.parametrize(("text", "expected"), [
    ("{not json", "PROXY_CONFIG: invalid JSON"),
    ("[1, 2]", "PROXY_CONFIG: expected a JSON object"),
    ('"istiod:15010"', "PROXY_CONFIG: expected a JSON object"),
    ('{"discoveryAddress": 15010}', "PROXY_CONFIG: discoveryAddress must be a string"),
    ('{"discoveryAddress": "istiod"}', "PROXY_CONFIG discoveryAddress: 'istiod' is not host:port"),
])
def test_a_bad_proxy_config_is_named(text: str, expected: str) -> None:
    assert expected in error(None, {"PROXY_CONFIG": text})


def test_a_bad_proxy_config_is_refused_even_when_overridden() -> None:
    assert "PROXY_CONFIG" in error(None, {"PROXY_CONFIG": "{oops", "XDS_ADDRESS": "10.0.0.1:15010"})


@pytest.mark.parametrize(("text", "expected"), [
    ("24h", timedelta(hours=24)),
    ("1h30m", timedelta(minutes=90)),
    ("90s", timedelta(seconds=90)),
    ("90m", timedelta(minutes=90)),
    ("1.5h", timedelta(minutes=90)),
    ("10s", timedelta(seconds=10)),
    ("9500ms", None),
    ("10000ms", timedelta(seconds=10)),
    ("2m30s", timedelta(seconds=150)),
])
def test_parse_duration(text: str, expected: timedelta | None) -> None:
    if expected is None:
        with pytest.raises(ConfigError, match="shorter than 10s"):
            parse_duration(text, "--secret-ttl (SECRET_TTL)")
    else:
        assert parse_duration(text, "x") == expected


@pytest.mark.parametrize("text", ["", "24", "h", "24 h", "1hx30m", "-1h", "1d", "24H", "soon", "1h 30m"])
def test_parse_duration_refuses_what_is_not_a_go_duration(text: str) -> None:
    with pytest.raises(ConfigError, match=r"the-setting: .* is not a duration"):
        parse_duration(text, "the-setting")


def test_secret_ttl_from_the_environment_and_the_flag() -> None:
    assert config(None, {"SECRET_TTL": "1h30m"}).cert_ttl == timedelta(minutes=90)
    assert config({"secret_ttl": "90s"}, {"SECRET_TTL": "24h"}).cert_ttl == timedelta(seconds=90)
    assert "--secret-ttl (SECRET_TTL): '500ms' is shorter than 10s" in error(None, {"SECRET_TTL": "500ms"})
    assert "--secret-ttl (SECRET_TTL): 'forever' is not a duration" in error(None, {"SECRET_TTL": "forever"})


def test_required_settings_are_named() -> None:
    with pytest.raises(ConfigError, match=r"--pod-name \(POD_NAME\): required"):
        config_from({}, {"POD_NAMESPACE": "shop", "INSTANCE_IP": "10.0.0.1"})
    assert "'10.0.0.x' is not an IP address" in error(None, {"INSTANCE_IP": "10.0.0.1,10.0.0.x"})


def test_every_setting_has_a_flag_and_an_environment_name() -> None:
    fields = set(proxy.ProxyConfig.__dataclass_fields__)
    assert {key for key, _, _ in SETTINGS} <= fields
    assert len({var for _, _, var in SETTINGS}) == len(SETTINGS)


def test_search_domains_from_resolv_conf(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# generated\nnameserver 10.0.0.10\nsearch old.example\n"
                      "search shop.svc.cluster.local svc.cluster.local cluster.local.\noptions ndots:5\n")
    assert search_domains(resolv) == ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local")
    resolv.write_text("search a.example\ndomain corp.example\n")  # the last of search/domain wins, as in glibc
    assert search_domains(resolv) == ("corp.example",)
    resolv.write_text("nameserver 10.0.0.10\n")
    assert search_domains(resolv) == ()
    assert search_domains(tmp_path / "missing.conf") == ()


# --- the command line ---------------------------------------------------------------------


def test_istio_injected_command_line_parses() -> None:
    args = build_parser().parse_args(["proxy-agent", "proxy", "sidecar", "--domain", "shop.svc.cluster.local",
                                      "--proxyLogLevel=debug", "--proxyComponentLogLevel=misc:error",
                                      "--log_output_level=default:info"])
    assert args.func is proxyagent.cmd_run
    assert (args.kind, args.domain, args.log_level) == ("sidecar", "shop.svc.cluster.local", "debug")


def test_istio_form_accepts_only_sidecar(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["proxy-agent", "proxy", "router"])
    assert info.value.code == 2
    assert "router" in capsys.readouterr().err


@pytest.fixture
def pod_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The pod's environment and nothing else of the agent's; starting anything fails the test."""
    for _, _, var in SETTINGS:
        monkeypatch.delenv(var, raising=False)
    for var in ("PROXY_CONFIG", "WEIR_POD_DIR", "WEIR_LOG_FORMAT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in POD.items():
        monkeypatch.setenv(var, value)

    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the agent was started")
    monkeypatch.setattr(proxyagent, "serve", must_not_run)
    monkeypatch.setattr(proxyagent, "grpc_signer", must_not_run)
    return monkeypatch


@pytest.mark.parametrize("argv", [["proxy-agent", "run"], ["proxy-agent", "proxy", "sidecar", "--proxyLogLevel=debug"]])
def test_without_a_ca_the_agent_exits_2_naming_ca_address(pod_env: pytest.MonkeyPatch, argv: list[str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--ca-address (CA_ADDR): required" in err
    assert "--ca-dir" in err


def test_with_a_ca_address_but_no_token_the_agent_exits_2_naming_the_file(
        pod_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "root-cert.pem").write_text("pem")
    pod_env.setenv("CA_ADDR", "10.213.0.1:15012")
    pod_env.setenv("WEIR_POD_DIR", str(tmp_path))
    assert main(["proxy-agent", "run"]) == 2
    assert f"--token-file (WEIR_TOKEN_FILE): {tmp_path / 'token'} does not exist" in capsys.readouterr().err


def test_a_bad_setting_exits_2_before_starting(pod_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    pod_env.setenv("PROXY_CONFIG", "{oops")
    assert main(["proxy-agent", "proxy", "sidecar"]) == 2
    assert "PROXY_CONFIG: invalid JSON" in capsys.readouterr().err
