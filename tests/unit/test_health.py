"""The health endpoints over real sockets on 127.0.0.1 (port 0: the kernel picks)."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import skip_unless_ci
from weir.nodeagent.health import EndpointServer, HealthServer, Readiness


def get(port: int, path: str, method: str = "GET") -> tuple[int, str, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode(), dict(response.getheaders())
    finally:
        conn.close()


@pytest.fixture
def readiness() -> Readiness:
    return Readiness("install", "plugin-server")


@pytest.fixture
def server(readiness: Readiness) -> Iterator[HealthServer]:
    s = HealthServer(readiness, readiness.reason, host="127.0.0.1", port=0)
    s.start()
    yield s
    s.stop()


def test_binds_a_real_port_when_asked_for_port_0(server: HealthServer) -> None:
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0
    assert server.running


def test_healthz_is_always_200(server: HealthServer, readiness: Readiness) -> None:
    assert get(server.address[1], "/healthz")[:2] == (200, "ok\n")
    readiness.open("install")
    readiness.open("plugin-server")
    assert get(server.address[1], "/healthz")[:2] == (200, "ok\n")


def test_readyz_follows_every_gate_and_names_the_closed_ones(server: HealthServer, readiness: Readiness) -> None:
    port = server.address[1]
    status, body, headers = get(port, "/readyz")
    assert (status, body) == (503, "not ready: install: starting; plugin-server: starting\n")
    assert headers["Content-Type"].startswith("text/plain")
    readiness.open("plugin-server")
    assert get(port, "/readyz")[:2] == (503, "not ready: install: starting\n")
    readiness.open("install")
    assert get(port, "/readyz")[:2] == (200, "ready\n")
    readiness.close("install", "10-bridge.conflist lost the weir-cni entry")
    assert get(port, "/readyz")[:2] == (503, "not ready: install: 10-bridge.conflist lost the weir-cni entry\n")


def test_a_plain_callable_without_reason() -> None:
    flag = threading.Event()
    with HealthServer(flag.is_set, host="127.0.0.1", port=0) as s:
        assert get(s.address[1], "/readyz")[:2] == (503, "not ready: not ready\n")
        flag.set()
        assert get(s.address[1], "/readyz")[:2] == (200, "ready\n")


def test_a_failing_check_is_not_ready_with_the_cause() -> None:
    def broken() -> bool:
        raise RuntimeError("store is gone")

    with HealthServer(broken, host="127.0.0.1", port=0) as s:
        status, body, _ = get(s.address[1], "/readyz")
        assert (status, body) == (503, "not ready: readiness check failed: store is gone\n")
        assert get(s.address[1], "/healthz")[0] == 200


def test_unknown_paths_methods_and_head(server: HealthServer) -> None:
    port = server.address[1]
    assert get(port, "/metrics")[0] == 404
    status, _, headers = get(port, "/healthz", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    status, body, headers = get(port, "/healthz", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, "", "3")
    assert get(port, "/readyz?verbose=1")[0] == 503  # query strings are ignored


def test_stop_releases_the_port_and_is_idempotent(readiness: Readiness) -> None:
    s = HealthServer(readiness, host="127.0.0.1", port=0)
    s.stop()  # before start: nothing to do
    _, port = s.start()
    with pytest.raises(RuntimeError, match="already started"):
        s.start()
    s.stop()
    s.stop()
    assert not s.running
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    again = EndpointServer({}, host="127.0.0.1", port=port)  # the port can be bound again at once
    again.start()
    again.stop()


def test_a_port_in_use_fails_at_start() -> None:
    with HealthServer(lambda: True, host="127.0.0.1", port=0) as first:
        second = HealthServer(lambda: True, host="127.0.0.1", port=first.address[1])
        with pytest.raises(OSError, match="in use"):
            second.start()


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        skip_unless_ci("no IPv6 in this kernel")
    try:
        s = HealthServer(lambda: True, host="::1", port=0)
        s.start()
    except OSError as exc:
        skip_unless_ci(f"cannot bind [::1]: {exc}")
    try:
        conn = http.client.HTTPConnection("::1", s.address[1], timeout=5)
        conn.request("GET", "/readyz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        s.stop()


def test_readiness_gates() -> None:
    with pytest.raises(ValueError, match="at least one gate"):
        Readiness()
    r = Readiness("install")
    with pytest.raises(KeyError, match="unknown readiness gate 'instal'"):
        r.open("instal")
    assert (r(), r.reason()) == (False, "install: starting")
    r.open("install")
    assert (r(), r.reason()) == (True, "ready")
    r.close("install", "")
    assert (r(), r.reason()) == (False, "install: not ready")
