"""The executor against the real kernel: idempotence, ownership, drift, rollback, removal,
back-end detection and refusal of the host namespace. Each test builds its own namespaces.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from weir.capture.apply import Backend, CaptureError, Executor
from weir.capture.pod import spec_from_pod
from weir.capture.spec import CaptureSpec
from weir.cli.main import main
from weir.netns import NetNS, lab
from weir.netns import run as run_in_ns
from weir.netns.lab import Host

from .helpers import (
    BACKENDS,
    IPTABLES_BACKENDS,
    backend_id,
    executor,
    iptables_save,
    netfilter,
    nft_ruleset,
    snapshot,
    spec,
    without_empty_tables,
)

PREFIX = "wex"

CAPTURE_ALL = {"INBOUND_PORTS_INCLUDE": "*", "OUTBOUND_IPRANGES_INCLUDE": "*", "ENABLE_INBOUND_IPV6": "true"}
OTHER = {"INBOUND_PORTS_INCLUDE": "8080,9090", "OUTBOUND_PORTS_EXCLUDE": "5432", "REDIRECT_DNS": "true",
         "CAPTURE_ALL_DNS": "true", "OUTBOUND_IPRANGES_INCLUDE": "10.0.0.0/8", "ENABLE_INBOUND_IPV6": "true"}
TPROXY_DNS = {**CAPTURE_ALL, "INBOUND_INTERCEPTION_MODE": "TPROXY", "REDIRECT_DNS": "true", "CAPTURE_ALL_DNS": "true",
              "EXCLUDE_INTERFACES": "eth9", "DROP_INVALID": "true"}
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app", "namespace": "default"},
       "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]}}

Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(params=BACKENDS, ids=backend_id)
def backend(request: pytest.FixtureRequest) -> Backend:
    value: Backend = request.param
    return value


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    with lab.topology(2, prefix=PREFIX) as topo:
        yield topo.hosts


def real_runner(argv: Sequence[str], ns: NetNS | None, *, input: str | None = None,
                env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_in_ns(argv, ns, input=input, env=env)


def comparable(state: Mapping[str, str], backend: Backend) -> dict[str, str]:
    """A snapshot, with the empty legacy tables (which the kernel cannot drop) left out."""
    out = dict(state)
    if backend is Backend.IPTABLES_LEGACY:
        for key in ("legacy-4", "legacy-6"):
            out[key] = without_empty_tables(out[key])
    return out


def weirless(save: str) -> str:
    """iptables-save text without any line of weir's (nor the empty tables that leaves)."""
    return without_empty_tables("".join(line + "\n" for line in save.splitlines() if "ISTIO_" not in line))


def iptables_tool(backend: Backend, family: int) -> str:
    base = "iptables" if family == 4 else "ip6tables"
    return f"{base}-{'legacy' if backend is Backend.IPTABLES_LEGACY else 'nft'}"


FOREIGN_RULES = (
    ("-A", "PREROUTING", "-p", "tcp", "--dport", "9999", "-j", "ACCEPT"),
    ("-N", "FOREIGN"),
    ("-A", "FOREIGN", "-p", "tcp", "--dport", "9997", "-j", "RETURN"),
    ("-A", "OUTPUT", "-p", "udp", "--dport", "9998", "-j", "ACCEPT"),
    ("-A", "OUTPUT", "-j", "FOREIGN"),
)
FOREIGN_NFT = """table inet foreign {
    chain pre {
        type nat hook prerouting priority dstnat - 5; policy accept;
        tcp dport 9996 counter accept
    }
    chain helper {
        udp dport 9995 counter return
    }
}
"""


def add_foreign(host: Host, backend: Backend) -> None:
    """Rules of someone else's: nat PREROUTING/OUTPUT rules and a chain (for native nftables,
    made with iptables-nft, as kube-proxy would, plus a table of its own)."""
    tool_backend = Backend.IPTABLES_NFT if backend is Backend.NFTABLES else backend
    for family in (4, 6):
        for rule in FOREIGN_RULES:
            host.run(iptables_tool(tool_backend, family), "-t", "nat", *rule)
    if backend is Backend.NFTABLES:
        host.run("nft", "-f", "-", input=FOREIGN_NFT)


def foreign_view(host: Host, backend: Backend) -> dict[str, str]:
    tool_backend = Backend.IPTABLES_NFT if backend is Backend.NFTABLES else backend
    view = {f"ipv{f}": weirless(iptables_save(host, tool_backend, f)) for f in (4, 6)}
    if backend is Backend.NFTABLES:
        view["inet foreign"] = host.run("nft", "list", "table", "inet", "foreign").stdout
    return view


# ---- idempotence and ownership -------------------------------------------------------------


def test_apply_is_idempotent_and_replaces_only_weirs_rules(
        hosts: list[Host], tmp_path: Path, backend: Backend) -> None:
    a, _ = hosts
    ex = executor(tmp_path)
    add_foreign(a, backend)
    foreign = foreign_view(a, backend)
    before = snapshot(a)
    assert "--dport 9999 -j ACCEPT" in foreign["ipv4"]
    assert ":FOREIGN - [0:0]" in foreign["ipv6"]

    first = ex.apply(spec(**CAPTURE_ALL), a.ns, backend)
    assert first.changed
    assert first.families == (4, 6)
    applied = snapshot(a)
    assert applied != before
    assert foreign_view(a, backend) == foreign

    again = ex.apply(spec(**CAPTURE_ALL), a.ns, backend)
    assert not again.changed
    assert snapshot(a) == applied

    other = ex.apply(spec(**OTHER), a.ns, backend)
    assert other.changed
    assert foreign_view(a, backend) == foreign
    assert ex.check(spec(**OTHER), a.ns, backend).ok
    stale = ex.check(spec(**CAPTURE_ALL), a.ns, backend)
    assert not stale.ok

    assert ex.remove(a.ns, spec(**OTHER), backend)
    assert foreign_view(a, backend) == foreign
    assert comparable(snapshot(a), backend) == comparable(before, backend)


# ---- removal --------------------------------------------------------------------------------

REMOVAL_CASES = {
    "redirect": lambda h: spec(**CAPTURE_ALL),
    "tproxy-dns-drop": lambda h: spec(**TPROXY_DNS),
    "pod-defaults-ipv6": lambda h: spec_from_pod(POD, [h.ipv6]),
}


@pytest.mark.parametrize("case", list(REMOVAL_CASES))
def test_remove_leaves_the_namespace_as_it_was(hosts: list[Host], tmp_path: Path, backend: Backend,
                                               case: str) -> None:
    a, _ = hosts
    ex = executor(tmp_path)
    wanted: CaptureSpec = REMOVAL_CASES[case](a)
    before = snapshot(a)
    ex.apply(wanted, a.ns, backend)
    assert ex.check(wanted, a.ns, backend).ok
    assert snapshot(a) != before

    assert ex.remove(a.ns, wanted, backend) is True
    after = snapshot(a)
    if backend is not Backend.IPTABLES_LEGACY:
        assert after == before  # iptables-nft's own tables are gone too
    assert comparable(after, backend) == comparable(before, backend)
    assert ex.remove(a.ns, wanted, backend) is False  # DEL twice is harmless
    assert comparable(snapshot(a), backend) == comparable(before, backend)


def test_switching_specs_leaves_nothing_of_the_old_one(hosts: list[Host], tmp_path: Path, backend: Backend) -> None:
    # TPROXY puts rules into built-in chains that jump nowhere of weir's (MARK, CONNMARK):
    # they must still go when the spec changes.
    a, _ = hosts
    ex = executor(tmp_path)
    fresh = executor(tmp_path / "fresh")
    with lab.topology(1, prefix=PREFIX) as other:
        reference = other.hosts[0]
        fresh.apply(spec(**CAPTURE_ALL), reference.ns, backend)
        ex.apply(spec(**TPROXY_DNS), a.ns, backend)
        ex.apply(spec(**CAPTURE_ALL), a.ns, backend)
        assert ex.check(spec(**CAPTURE_ALL), a.ns, backend).ok
        assert comparable(netfilter(a), backend) == comparable(netfilter(reference), backend)


# ---- drift ----------------------------------------------------------------------------------


def _tamper(host: Host, backend: Backend) -> tuple[str, str, str, str]:
    """Delete a weir rule, add one to a weir chain; returns (chain, missing, chain, unexpected)."""
    if backend is Backend.NFTABLES:
        listing = host.run("nft", "-a", "list", "chain", "inet", "istio-proxy-nat", "prerouting").stdout
        handle = re.search(r"jump istio-inbound # handle (\d+)", listing)
        assert handle, listing
        host.run("nft", "delete", "rule", "inet", "istio-proxy-nat", "prerouting", "handle", handle.group(1))
        host.run("nft", "add", "rule", "inet", "istio-proxy-nat", "istio-output", "tcp", "dport", "7777",
                 "counter", "return")
        return ("chain prerouting", "meta l4proto tcp counter jump istio-inbound",
                "chain istio-output", "tcp dport 7777 counter return")
    tool = iptables_tool(backend, 4)
    host.run(tool, "-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "ISTIO_INBOUND")
    host.run(tool, "-t", "nat", "-A", "ISTIO_OUTPUT", "-p", "tcp", "--dport", "7777", "-j", "RETURN")
    return ("ipv4 nat PREROUTING", "-A PREROUTING -p tcp -j ISTIO_INBOUND",
            "ipv4 nat ISTIO_OUTPUT", "-A ISTIO_OUTPUT -p tcp -m tcp --dport 7777 -j RETURN")


def test_tampering_is_reported_and_repaired(hosts: list[Host], tmp_path: Path, backend: Backend,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = hosts
    ex = executor(tmp_path)
    config = tmp_path / "capture.json"
    config.write_text(json.dumps(CAPTURE_ALL))
    cli = ["capture", "check", "--config", str(config), "--netns", a.path, "--backend", backend.value,
           "--state-dir", str(tmp_path / "state")]
    ex.apply(spec(**CAPTURE_ALL), a.ns, backend)
    assert ex.check(spec(**CAPTURE_ALL), a.ns, backend).ok

    where_missing, missing, where_extra, extra = _tamper(a, backend)
    result = ex.check(spec(**CAPTURE_ALL), a.ns, backend)
    assert not result.ok
    text = result.describe()
    assert f"{where_missing}:\n" in text, text
    assert f"  - {missing}    (missing)" in text, text
    assert f"{where_extra}:\n" in text, text
    assert f"  + {extra}    (unexpected)" in text, text

    capsys.readouterr()
    assert main(cli) == 1
    out = capsys.readouterr().out
    assert "differ from the spec" in out
    assert text in out

    assert ex.apply(spec(**CAPTURE_ALL), a.ns, backend).changed
    assert ex.check(spec(**CAPTURE_ALL), a.ns, backend).ok
    assert main(cli) == 0
    assert "match the spec" in capsys.readouterr().out


# ---- rollback -------------------------------------------------------------------------------


def _failing(match: Callable[[Sequence[str]], bool]) -> tuple[Runner, list[list[str]]]:
    """The real runner, except that commands for which ``match`` holds fail without running."""
    failed: list[list[str]] = []

    def runner(argv: Sequence[str], ns: NetNS | None, *, input: str | None = None,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        if match(argv):
            failed.append(list(argv))
            return subprocess.CompletedProcess(list(argv), 1, "", "injected failure")
        return real_runner(argv, ns, input=input, env=env)

    return runner, failed


def _assert_nothing_of_weirs(host: Host, backend: Backend) -> None:
    for family in (4, 6):
        save = iptables_save(host, backend, family)
        assert "ISTIO" not in save, save
    assert "lookup 133" not in host.run("ip", "-4", "rule").stdout + host.run("ip", "-6", "rule").stdout
    assert "::6/128" not in host.run("ip", "-6", "addr", "show", "dev", "lo").stdout


@pytest.mark.parametrize("backend", IPTABLES_BACKENDS, ids=backend_id)
def test_ipv6_failure_rolls_back_ipv4(hosts: list[Host], tmp_path: Path, backend: Backend) -> None:
    a, _ = hosts
    runner, failed = _failing(lambda argv: argv[0].startswith("ip6tables-") and "restore" in argv[0]
                              and "--noflush" in argv)
    ex = executor(tmp_path, runner=runner)
    before = snapshot(a)
    with pytest.raises(CaptureError, match="IPv6"):
        ex.apply(spec(**TPROXY_DNS), a.ns, backend)
    assert failed, "the IPv6 restore was never attempted"
    _assert_nothing_of_weirs(a, backend)
    assert comparable(snapshot(a), backend) == comparable(before, backend)
    # Nothing stale is left behind for the next, successful attempt.
    assert executor(tmp_path).apply(spec(**TPROXY_DNS), a.ns, backend).changed
    assert executor(tmp_path).check(spec(**TPROXY_DNS), a.ns, backend).ok


@pytest.mark.parametrize("backend", IPTABLES_BACKENDS, ids=backend_id)
def test_kernel_refusal_in_ipv6_rolls_back_ipv4(hosts: list[Host], tmp_path: Path, backend: Backend) -> None:
    # ISTIO_STALE is weir's by name, so weir deletes it; a foreign chain that jumps to it makes
    # the kernel refuse that, and only for IPv6, after IPv4 went in.
    a, _ = hosts
    tool = iptables_tool(backend, 6)
    a.run(tool, "-t", "nat", "-N", "ISTIO_STALE")
    a.run(tool, "-t", "nat", "-N", "FOREIGN6")
    a.run(tool, "-t", "nat", "-A", "FOREIGN6", "-j", "ISTIO_STALE")
    before = snapshot(a)
    ex = executor(tmp_path)
    with pytest.raises(CaptureError, match=r"IPv6\).*ISTIO_STALE|IPv6\) refused"):
        ex.apply(spec(**TPROXY_DNS), a.ns, backend)
    assert "ISTIO" not in iptables_save(a, backend, 4)
    assert comparable(snapshot(a), backend) == comparable(before, backend)
    if backend is Backend.IPTABLES_NFT:
        assert snapshot(a) == before  # exactly: not even an empty base chain was added


def test_routing_failure_rolls_back_the_rules(hosts: list[Host], tmp_path: Path, backend: Backend) -> None:
    a, _ = hosts
    runner, failed = _failing(lambda argv: list(argv[:4]) == ["ip", "-4", "rule", "add"])
    ex = executor(tmp_path, runner=runner)
    before = snapshot(a)
    with pytest.raises(CaptureError, match="fwmark"):
        ex.apply(spec(**TPROXY_DNS), a.ns, backend)
    assert failed
    assert comparable(snapshot(a), backend) == comparable(before, backend)
    assert "istio" not in nft_ruleset(a).lower()


# ---- back-end detection ---------------------------------------------------------------------


def test_detection_prefers_nft_in_a_fresh_namespace(hosts: list[Host], tmp_path: Path) -> None:
    a, _ = hosts
    assert executor(tmp_path, environ={}).detect_backend(a.ns) is Backend.IPTABLES_NFT
    result = executor(tmp_path, environ={}).apply(spec(**CAPTURE_ALL), a.ns)
    assert result.backend is Backend.IPTABLES_NFT
    assert "ISTIO_OUTPUT" in iptables_save(a, Backend.IPTABLES_NFT, 4)
    assert iptables_save(a, Backend.IPTABLES_LEGACY, 4) == ""


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_detection_picks_legacy_when_legacy_has_rules(hosts: list[Host], tmp_path: Path, family: int) -> None:
    a, _ = hosts
    a.run(iptables_tool(Backend.IPTABLES_LEGACY, family), "-t", "filter", "-A", "INPUT", "-p", "tcp",
          "--dport", "22", "-j", "ACCEPT")
    assert executor(tmp_path, environ={}).detect_backend(a.ns) is Backend.IPTABLES_LEGACY
    result = executor(tmp_path, environ={}).apply(spec(**CAPTURE_ALL), a.ns)
    assert result.backend is Backend.IPTABLES_LEGACY
    assert "ISTIO_OUTPUT" in iptables_save(a, Backend.IPTABLES_LEGACY, 4)
    assert "ISTIO" not in nft_ruleset(a)
    # FORCE_IPTABLES_BINARY overrides what the namespace suggests.
    assert executor(tmp_path, environ={"FORCE_IPTABLES_BINARY": "nft"}).detect_backend(a.ns) is Backend.IPTABLES_NFT


def test_forced_backend(hosts: list[Host], tmp_path: Path) -> None:
    a, _ = hosts
    assert executor(tmp_path, environ={"FORCE_IPTABLES_BINARY": "legacy"}).detect_backend(a.ns) \
        is Backend.IPTABLES_LEGACY
    with pytest.raises(CaptureError, match="FORCE_IPTABLES_BINARY"):
        executor(tmp_path, environ={"FORCE_IPTABLES_BINARY": "ebtables"}).detect_backend(a.ns)


# ---- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/proc/1/ns/net", "/proc/self/ns/net", "/var/run/netns/weir-test-no-such-ns"])
def test_executor_refuses_the_host_and_missing_namespaces(tmp_path: Path, path: str) -> None:
    calls: list[Sequence[str]] = []

    def recording(argv: Sequence[str], ns: NetNS | None, *, input: str | None = None,
                  env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        raise AssertionError(f"the executor ran {argv} for a namespace it must refuse")

    ex = Executor(recording, state_dir=str(tmp_path / "state"), environ={})
    ns = NetNS(path)
    for attempt in (lambda: ex.apply(spec(**CAPTURE_ALL), ns, Backend.IPTABLES_NFT),
                    lambda: ex.check(spec(**CAPTURE_ALL), ns),
                    lambda: ex.remove(ns, spec(**CAPTURE_ALL))):
        with pytest.raises(CaptureError, match=r"host's own|does not exist"):
            attempt()
    assert calls == []
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("verb", ["apply", "check", "remove"])
@pytest.mark.parametrize("path", ["/proc/1/ns/net", "/var/run/netns/weir-test-no-such-ns"])
def test_cli_refuses_the_host_and_missing_namespaces(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     verb: str, path: str) -> None:
    config = tmp_path / "capture.json"
    config.write_text(json.dumps(CAPTURE_ALL))
    state = tmp_path / "state"
    code = main(["capture", verb, "--config", str(config), "--netns", path, "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert path in err
    assert not state.exists()  # no executor ever ran


def test_cli_rejects_a_malformed_pod_and_leaves_the_namespace_alone(
        hosts: list[Host], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = hosts
    pod = json.loads(json.dumps(POD))
    pod["metadata"]["annotations"] = {"traffic.sidecar.istio.io/includeInboundPorts": "70000"}
    bad_value, bad_yaml = tmp_path / "pod.json", tmp_path / "broken.yaml"
    bad_value.write_text(json.dumps(pod))
    bad_yaml.write_text("metadata: {name: [unclosed\n")
    before = snapshot(a)
    for path in (bad_value, bad_yaml):
        for verb in ("apply", "check", "remove"):
            code = main(["capture", verb, "--pod", str(path), "--netns", a.path, "--state-dir",
                         str(tmp_path / "state")])
            err = capsys.readouterr().err
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1, err
            assert str(path) in err
            if path is bad_value:
                assert "traffic.sidecar.istio.io/includeInboundPorts: invalid value '70000'" in err, err
    assert snapshot(a) == before
    assert not (tmp_path / "state").exists()
