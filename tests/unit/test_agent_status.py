"""The sidecar agent's status server against a fake Envoy admin on 127.0.0.1: readiness from
the admin's ``/ready`` and the certificate, and Envoy's stats merged with the agent's metrics."""

from __future__ import annotations

import asyncio
import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from weir.agent.bootstrap import TcpAddress
from weir.agent.status import AgentMetrics, Answer, StatusServer, merge_metrics, readiness

ENVOY_STATS = ("# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n"
               "# TYPE envoy_cluster_upstream_cx_total counter\n"
               "envoy_cluster_upstream_cx_total{cluster=\"xds-grpc\"} 4\n")


@dataclass
class FakeAdmin:
    """What the fake admin answers; the test changes it between requests."""

    state: str = "LIVE"
    stats: str = ENVOY_STATS
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def admin() -> Iterator[tuple[FakeAdmin, TcpAddress]]:
    fake = FakeAdmin()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.requests.append(self.path)
            if self.path == "/ready":
                status, body = (200 if fake.state == "LIVE" else 503), fake.state + "\n"
            elif self.path == "/stats/prometheus":
                status, body = 200, fake.stats
            else:
                status, body = 404, "no\n"
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-admin", daemon=True)
    thread.start()
    try:
        yield fake, TcpAddress("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def get(address: tuple[str, int], path: str) -> tuple[int, str, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{address[0]}:{address[1]}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


def run_with_server(admin: TcpAddress, paths: list[str], *, has_secret: bool = True,
                    metrics: AgentMetrics | None = None) -> list[tuple[int, str, str]]:
    """Start a status server on 127.0.0.1:0, GET each path (from a thread), stop it."""
    async def main() -> list[tuple[int, str, str]]:
        server = StatusServer(admin, metrics or AgentMetrics(), lambda: has_secret, host="127.0.0.1", port=0)
        await server.start()
        try:
            return [await asyncio.to_thread(get, server.address, p) for p in paths]
        finally:
            await server.stop()
    return asyncio.run(main())


# ---- the pure decisions ---------------------------------------------------------------------


def test_readiness_table() -> None:
    assert readiness("LIVE", True) == Answer(200, "")
    assert readiness("LIVE", False).status == 503
    assert "no workload certificate" in readiness("LIVE", False).body
    initializing = readiness("INITIALIZING", True)
    assert initializing.status == 503
    assert "INITIALIZING" in initializing.body
    assert "control plane" in initializing.body
    assert readiness("DRAINING", True).status == 503
    assert "does not answer" in readiness(None, True, "admin 127.0.0.1:15000").body


def test_merge_keeps_both_texts_line_terminated() -> None:
    assert merge_metrics("a 1", "b 2\n") == "a 1\nb 2\n"
    assert merge_metrics("", "b 2\n") == "b 2\n"


def test_agent_metrics_have_istio_style_names_and_no_created_samples() -> None:
    text = AgentMetrics(envoy_restarts=lambda: 3, cert_expiry=lambda: 1.7e9, dns_requests=lambda: 5).render()
    assert "weir_agent_envoy_restarts_total 3.0\n" in text
    assert "weir_agent_cert_expiry_timestamp_seconds 1.7e+09\n" in text
    assert "weir_agent_dns_requests_total 5.0\n" in text
    assert "_created" not in text
    absent = AgentMetrics().render()
    assert "weir_agent_cert_expiry_timestamp_seconds" not in absent
    assert "weir_agent_dns_requests" not in absent


# ---- the server against a fake admin --------------------------------------------------------


def test_ready_when_envoy_is_live_and_a_certificate_exists(admin: tuple[FakeAdmin, TcpAddress]) -> None:
    fake, address = admin
    [(status, _, body)] = run_with_server(address, ["/healthz/ready"])
    assert (status, body) == (200, "")
    assert fake.requests == ["/ready"]


def test_not_ready_names_the_server_state(admin: tuple[FakeAdmin, TcpAddress]) -> None:
    fake, address = admin
    fake.state = "PRE_INITIALIZING"
    [(status, _, body)] = run_with_server(address, ["/healthz/ready"])
    assert status == 503
    assert "server state PRE_INITIALIZING" in body
    assert "XDS server" in body


def test_not_ready_without_a_certificate(admin: tuple[FakeAdmin, TcpAddress]) -> None:
    _, address = admin
    [(status, _, body)] = run_with_server(address, ["/healthz/ready"], has_secret=False)
    assert status == 503
    assert "no workload certificate" in body


def test_not_ready_when_the_admin_does_not_answer() -> None:
    dead = TcpAddress("127.0.0.1", 1)  # nothing listens on port 1 here
    [(status, _, body)] = run_with_server(dead, ["/healthz/ready"])
    assert status == 503
    assert f"{dead} does not answer" in body


def test_stats_merge_envoy_and_agent(admin: tuple[FakeAdmin, TcpAddress]) -> None:
    _, address = admin
    metrics = AgentMetrics(envoy_restarts=lambda: 2, cert_expiry=lambda: 1234.0, dns_requests=lambda: 7)
    [(status, content_type, body)] = run_with_server(address, ["/stats/prometheus"], metrics=metrics)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert body.startswith(ENVOY_STATS)
    assert body[len(ENVOY_STATS):] == metrics.render()
    assert "weir_agent_envoy_restarts_total 2.0" in body


def test_stats_without_envoy_serve_the_agent_alone() -> None:
    metrics = AgentMetrics(envoy_restarts=lambda: 1)
    [(status, _, body)] = run_with_server(TcpAddress("127.0.0.1", 1), ["/stats/prometheus"], metrics=metrics)
    assert status == 200
    assert body == metrics.render()


def test_unknown_path_is_404(admin: tuple[FakeAdmin, TcpAddress]) -> None:
    fake, address = admin
    [(status, _, _)] = run_with_server(address, ["/nope"])
    assert status == 404
    assert fake.requests == []
