"""weir.install.report, the pure parts: Envoy's counters summed per sidecar, the checks that
judge a report shaped as :func:`collect` builds it, and the printed report."""

from __future__ import annotations

import copy
from typing import Any

from weir.install.report import SMOKE_TEST, checks, render, sidecar_summary

BACKEND = "backend.demo.svc.cluster.local"
CLIENT_STATS = {
    f"cluster.outbound|8080|v1|{BACKEND}.upstream_rq_total": 12,
    f"cluster.outbound|8080|v2|{BACKEND}.upstream_rq_total": 3,
    f"cluster.outbound|8080|v1|{BACKEND}.upstream_cx_total": 2,
    f"cluster.outbound|8080|v2|{BACKEND}.upstream_cx_total": 1,
    f"cluster.outbound|8080|v1|{BACKEND}.ssl.handshake": 2,
    f"cluster.outbound|8080|v2|{BACKEND}.ssl.handshake": 1,
    "cluster.outbound|9000||tcp-echo.demo.svc.cluster.local.upstream_cx_total": 4,
    # not mesh traffic the summary counts
    f"cluster.outbound|8080|v1|{BACKEND}.upstream_rq_2xx": 12,
    "cluster.xds-grpc.upstream_rq_total": 7,
    "cluster.xds-grpc.upstream_cx_total": 1,
    "cluster.inbound|8080||.upstream_rq_total": 99,
    "http.outbound_0.0.0.0_8080.downstream_rq_total": 15,
    "listener.0.0.0.0_15001.ssl.handshake": 5,
}
SERVER_STATS = {
    "http.inbound_0.0.0.0_8080.downstream_rq_total": 15,
    "http.inbound_0.0.0.0_8081.downstream_rq_total": 1,
    "tcp.inbound|9000||.downstream_cx_total": 4,
    "listener.0.0.0.0_15006.ssl.handshake": 6,
    "http.inbound_0.0.0.0_8080.downstream_rq_2xx": 15,
    "listener.0.0.0.0_15006.downstream_cx_total": 6,
}


def test_sidecar_summary_of_a_client() -> None:
    assert sidecar_summary(CLIENT_STATS) == {
        "inbound_requests": 0, "inbound_connections": 0, "inbound_tls_handshakes": 0,
        "outbound_requests": 15, "outbound_connections": 7, "outbound_tls_handshakes": 3}


def test_sidecar_summary_of_a_server() -> None:
    assert sidecar_summary(SERVER_STATS) == {
        "inbound_requests": 16, "inbound_connections": 4, "inbound_tls_handshakes": 6,
        "outbound_requests": 0, "outbound_connections": 0, "outbound_tls_handshakes": 0}


def test_sidecar_summary_without_stats_is_zero() -> None:
    assert set(sidecar_summary({}).values()) == {0}


def process(pid: int, command: str, *, net_admin: bool = False, net_raw: bool = False) -> dict[str, Any]:
    return {"pid": pid, "command": command, "uid": 1337 if command == "envoy" else 1000,
            "net_admin": net_admin, "net_raw": net_raw}


def good_report() -> dict[str, Any]:
    """A mesh that did everything: the shape :func:`collect` produces."""
    backend_answer = {"service": "backend", "version": "v1", "pod": "backend-v1",
                      "peer": {"by": "spiffe://cluster.local/ns/demo/sa/backend",
                               "uri": "spiffe://cluster.local/ns/demo/sa/frontend"}}
    return {
        "traffic": [{"url": "http://frontend.demo:8080/", "address": "10.96.0.10", "requests": 20, "ok": 20,
                     "failed": 0, "status": {"200": 20}, "versions": {"v1": 16, "v2": 4}, "errors": {},
                     "samples": [{"service": "frontend", "backend": {"body": backend_answer}}],
                     "from": "demo/client"}],
        "sidecars": {"demo/client": sidecar_summary(CLIENT_STATS),
                     "demo/backend-v1": sidecar_summary(SERVER_STATS)},
        "peers": ["backend (backend-v1) <- spiffe://cluster.local/ns/demo/sa/frontend"],
        "dns": {"resolved": {"http://backend.demo:8080/": {"address": "10.96.0.11", "service": BACKEND},
                             "tcp-echo.demo:9000": {"address": "10.96.0.12",
                                                    "service": "tcp-echo.demo.svc.cluster.local"}},
                "queries": {"demo/client": 40, "demo/backend-v1": None}},
        "capabilities": {"demo/client": [process(101, "python3"), process(102, "envoy"), process(103, "weir")],
                         "demo/backend-v1": [process(201, "python3"), process(202, "envoy")]},
    }


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in checks(report)}


def failing(report: dict[str, Any]) -> set[str]:
    return {name for name, c in by_name(report).items() if not c["ok"]}


def test_a_good_report_holds_every_claim() -> None:
    found = by_name(good_report())
    assert list(found) == ["traffic", "envoy-both-sides", "mutual-tls-peers", "dns-proxy", "no-net-admin"]
    assert all(c["ok"] for c in found.values()), found
    assert found["traffic"]["detail"] == "20/20 requests answered (versions v1: 16, v2: 4)"
    assert "1 sidecars sent to mesh services, 1 took requests in, all over mutual TLS" in (
        found["envoy-both-sides"]["detail"])
    assert "spiffe://cluster.local/ns/demo/sa/frontend" in found["mutual-tls-peers"]["detail"]
    assert f"http://backend.demo:8080/ -> 10.96.0.11 ({BACKEND})" in found["dns-proxy"]["detail"]
    assert "40 queries answered" in found["dns-proxy"]["detail"]
    assert found["no-net-admin"]["detail"].startswith("5 processes in 2 pods checked; none holds")


def test_failed_traffic() -> None:
    report = good_report()
    report["traffic"][0].update(ok=17, failed=3, errors={"ConnectionResetError: reset": 2, "timed out": 1})
    assert failing(report) == {"traffic"}
    detail = by_name(report)["traffic"]["detail"]
    assert detail.startswith("17/20 requests answered")
    assert "ConnectionResetError: reset" in detail
    assert "timed out" in detail


def test_traffic_that_could_not_be_sent_at_all() -> None:
    report = good_report()
    report["traffic"].append({"requests": 20, "failed": 20, "errors": {"pod demo/other has no running sandbox": 1},
                              "from": "demo/other"})
    assert "traffic" in failing(report)
    assert by_name(report)["traffic"]["detail"].startswith("20/40 requests answered")


def test_no_requests_sent_is_not_success() -> None:
    report = good_report()
    report["traffic"] = [{"requests": 0, "ok": 0, "failed": 0, "from": "demo/client"}]
    assert "traffic" in failing(report)


def test_a_sidecar_taking_requests_without_tls() -> None:
    report = good_report()
    report["sidecars"]["demo/backend-v1"]["inbound_tls_handshakes"] = 0
    assert failing(report) == {"envoy-both-sides"}
    assert "NOT all over TLS" in by_name(report)["envoy-both-sides"]["detail"]


def test_no_sidecar_sending_or_none_receiving() -> None:
    report = good_report()
    report["sidecars"]["demo/client"] = sidecar_summary({})
    assert "envoy-both-sides" in failing(report)
    report = good_report()
    report["sidecars"]["demo/backend-v1"] = sidecar_summary({})
    assert "envoy-both-sides" in failing(report)


def test_no_peer_identity_seen() -> None:
    report = good_report()
    report["peers"] = []
    assert failing(report) == {"mutual-tls-peers"}
    assert by_name(report)["mutual-tls-peers"]["detail"] == "no application saw a peer identity"


def test_dns_answered_outside_the_mesh() -> None:
    report = good_report()
    report["dns"]["resolved"]["http://backend.demo:8080/"] = {"address": "93.184.216.34", "service": ""}
    assert failing(report) == {"dns-proxy"}
    assert "http://backend.demo:8080/ -> 93.184.216.34 (not a mesh VIP)" in by_name(report)["dns-proxy"]["detail"]


def test_dns_without_queries_or_names() -> None:
    report = good_report()
    report["dns"]["queries"] = {"demo/client": None, "demo/backend-v1": 0}
    assert failing(report) == {"dns-proxy"}
    report = good_report()
    report["dns"]["resolved"] = {}
    assert failing(report) == {"dns-proxy"}


def test_a_process_holding_net_raw() -> None:
    report = good_report()
    report["capabilities"]["demo/backend-v1"].append(process(203, "ping", net_raw=True))
    assert failing(report) == {"no-net-admin"}
    detail = by_name(report)["no-net-admin"]["detail"]
    assert detail.startswith("6 processes in 2 pods checked; holding: ")
    assert "demo/backend-v1: ping (pid 203)" in detail
    report["capabilities"]["demo/client"][0]["net_admin"] = True
    assert "demo/client: python3 (pid 101)" in by_name(report)["no-net-admin"]["detail"]


def test_no_smoke_test_pods_at_all() -> None:
    report = good_report()
    report.update(traffic=[], sidecars={}, peers=[], dns={"resolved": {}, "queries": {}})
    found = by_name(report)
    assert list(found) == ["traffic", "no-net-admin"]  # nothing was sent, so nothing else is claimed
    assert found["traffic"]["ok"] is True
    assert found["traffic"]["detail"] == f"no pod carries a {SMOKE_TEST} annotation: no traffic sent"
    assert found["no-net-admin"]["ok"] is True


def test_checks_do_not_change_the_report() -> None:
    report = good_report()
    before = copy.deepcopy(report)
    checks(report)
    assert report == before


def test_render_mentions_each_check_and_each_sidecar() -> None:
    report = good_report()
    report["dns"]["resolved"]["http://backend.demo:8080/"]["service"] = ""
    report["checks"] = checks(report)
    text = render(report)
    for check in report["checks"]:
        assert f"{'ok  ' if check['ok'] else 'FAIL'} {check['name']}: {check['detail']}" in text
    assert "FAIL dns-proxy" in text
    assert "ok   traffic" in text
    assert ("sidecar demo/backend-v1: in 16 requests + 4 TCP connections (6 TLS handshakes); "
            "out 0 requests + 0 connections") in text
    assert "sidecar demo/client: in 0 requests" in text
    assert text.index("demo/backend-v1") < text.index("sidecar demo/client")


def test_no_process_found_is_not_evidence_of_no_capabilities() -> None:
    report = good_report()
    report["capabilities"] = {"demo/client": []}
    assert by_name(report)["no-net-admin"]["ok"] is False
