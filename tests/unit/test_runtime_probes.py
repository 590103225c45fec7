"""Container probes: kubelet's prober semantics (pure), the HTTP it speaks, and the non-blocking
checks against servers on loopback (a process's own loopback: no root, no netns)."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from weir.api.pod_model import (
    Container,
    ContainerPort,
    ExecAction,
    HTTPGetAction,
    HTTPHeader,
    Probe,
    ProbeHandler,
    TCPSocketAction,
)
from weir.runtime import grpcprobe
from weir.runtime.probecheck import Checks, ExecContext, start_check
from weir.runtime.probes import (
    ContainerProbes,
    HTTPResponse,
    Outcome,
    failure_event,
    http_outcome,
    http_request,
    kill_event,
    parse_http_response,
    url,
)

OK, FAIL = Outcome(True), Outcome(False, "no")


def app(**probes: Probe) -> Container:
    return Container(name="app", command=("app",), ports=(ContainerPort(8080, name="http"),), **probes)


def probe(**fields: Any) -> Probe:
    return Probe(handler=TCPSocketAction(port=8080), **fields)


def attempt(probes: ContainerProbes, kind: str, outcome: Outcome, now: float) -> bool:
    tracker = probes.trackers[kind]  # type: ignore[index]
    assert tracker in probes.due(now), f"{kind} is not due at {now}"
    probes.begin(tracker, now)
    return probes.finish(tracker, outcome)


# --- kubelet's prober, as a state machine ----------------------------------------------------------


def test_without_probes_a_container_is_started_and_ready() -> None:
    probes = ContainerProbes(app(), 0.0)
    assert (probes.started, probes.ready, probes.failed(), probes.due(100.0)) == (True, True, None, [])


def test_startup_holds_the_others_back_until_it_passes() -> None:
    probes = ContainerProbes(app(startup_probe=probe(period_seconds=1, failure_threshold=5),
                                 readiness_probe=probe(period_seconds=15), liveness_probe=probe()), 100.0)
    assert (probes.started, probes.ready) == (False, False)
    assert [t.kind for t in probes.due(100.0)] == ["startup"]
    assert not attempt(probes, "startup", FAIL, 100.0)
    assert probes.due(100.5) == [], "one attempt per period"
    assert not attempt(probes, "startup", FAIL, 101.0)
    assert attempt(probes, "startup", OK, 102.0)
    assert (probes.started, probes.ready) == (True, False)
    assert [t.kind for t in probes.due(102.0)] == ["liveness", "readiness"], "the others run at once"
    assert attempt(probes, "readiness", OK, 102.0)
    assert probes.ready
    assert [t.kind for t in probes.due(200.0)] == ["liveness", "readiness"], "startup is done"


def test_startup_failing_failure_threshold_times_in_a_row_asks_for_a_kill() -> None:
    probes = ContainerProbes(app(startup_probe=probe(period_seconds=1, failure_threshold=3)), 0.0)
    attempt(probes, "startup", FAIL, 0.0)
    attempt(probes, "startup", FAIL, 1.0)
    attempt(probes, "startup", OK, 2.0)  # a pass resets the count... and starts the container
    assert probes.started
    probes = ContainerProbes(app(startup_probe=probe(period_seconds=1, failure_threshold=3)), 0.0)
    for now in (0.0, 1.0):
        assert not attempt(probes, "startup", FAIL, now)
        assert probes.failed() is None
    assert attempt(probes, "startup", FAIL, 2.0)
    failed = probes.failed()
    assert failed is not None
    assert failed.kind == "startup"
    assert probes.due(10.0) == [], "on hold until the container restarts"


def test_readiness_thresholds_and_flips() -> None:
    probes = ContainerProbes(app(readiness_probe=probe(period_seconds=2, success_threshold=2,
                                                       failure_threshold=2)), 0.0)
    assert (probes.started, probes.ready) == (True, False)
    assert not attempt(probes, "readiness", OK, 0.0)
    assert attempt(probes, "readiness", OK, 2.0)
    assert probes.ready
    assert not attempt(probes, "readiness", FAIL, 4.0)
    assert probes.ready, "one failure is below the threshold"
    assert attempt(probes, "readiness", FAIL, 6.0)
    assert not probes.ready
    assert probes.failed() is None, "readiness never kills"
    assert not attempt(probes, "readiness", FAIL, 8.0)


def test_liveness_starts_alive_and_kills_after_the_threshold() -> None:
    probes = ContainerProbes(app(liveness_probe=probe(initial_delay_seconds=5, period_seconds=1,
                                                      failure_threshold=2)), 10.0)
    assert probes.ready
    assert probes.due(14.9) == [], "initialDelaySeconds counts from the container's start"
    assert not attempt(probes, "liveness", OK, 15.0)
    assert not attempt(probes, "liveness", FAIL, 16.0)
    assert attempt(probes, "liveness", FAIL, 17.0)
    failed = probes.failed()
    assert failed is not None
    assert failed.kind == "liveness"


def test_a_slow_attempt_is_never_doubled() -> None:
    probes = ContainerProbes(app(readiness_probe=probe(period_seconds=1)), 0.0)
    tracker = probes.due(0.0)[0]
    probes.begin(tracker, 0.0)
    assert probes.due(5.0) == [], "still in flight"
    probes.finish(tracker, OK)
    assert probes.due(5.0) == [tracker]


def test_failures_are_reported_when_new_and_then_seldom() -> None:
    tracker = ContainerProbes(app(readiness_probe=probe()), 0.0).trackers["readiness"]
    assert tracker.should_report("refused", 0.0)
    assert not tracker.should_report("refused", 10.0)
    assert tracker.should_report("timeout", 11.0)
    assert tracker.should_report("timeout", 72.0)
    tracker.observe(True)
    assert tracker.should_report("timeout", 73.0), "a failure after a pass is news"


def test_kubelet_words() -> None:
    assert failure_event("readiness", "HTTP probe failed with statuscode: 500") == \
        "Readiness probe failed: HTTP probe failed with statuscode: 500"
    assert kill_event("app", "liveness", True) == "Container app failed liveness probe, will be restarted"
    assert kill_event("app", "startup", False) == "Container app failed startup probe"


# --- HTTP, pure ---------------------------------------------------------------------------------------


def test_the_request_kubelet_sends() -> None:
    action = HTTPGetAction(port="http", path="/healthz/ready")
    assert url(action, 15021) == "http://127.0.0.1:15021/healthz/ready"
    assert http_request(action, 15021) == (
        b"GET /healthz/ready HTTP/1.1\r\nHost: 127.0.0.1:15021\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n")
    custom = HTTPGetAction(port=80, host="::1", scheme="HTTPS", http_headers=(
        HTTPHeader("host", "web.local"), HTTPHeader("User-Agent", ""), HTTPHeader("X-A", "1"), HTTPHeader("X-A", "2")))
    assert url(custom, 80) == "https://[::1]:80/"
    assert http_request(custom, 80) == (
        b"GET / HTTP/1.1\r\nAccept: */*\r\nHost: web.local\r\nX-A: 1\r\nX-A: 2\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize(("data", "eof", "expected"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", False, HTTPResponse(200, b"ok")),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", False, None),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", True, HTTPResponse(200, b"ok")),
    (b"HTTP/1.0 503 Service Unavailable\r\n\r\n", False, None),
    (b"HTTP/1.0 503 Service Unavailable\r\n\r\ndown", True, HTTPResponse(503, b"down")),
    (b"HTTP/1.1 204 No Content\r\n\r\n", False, HTTPResponse(204, b"")),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False,
     HTTPResponse(200, b"2\r\nok\r\n0\r\n\r\n")),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n", False, HTTPResponse(302, b"")),
    (b"HTTP/1.1 200 OK\r\nContent-Le", False, None),
    (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 20000, False, HTTPResponse(200, b"x" * 10240)),
])
def test_reading_the_answer(data: bytes, eof: bool, expected: HTTPResponse | None) -> None:
    assert parse_http_response(data, eof) == expected


@pytest.mark.parametrize(("data", "message"), [
    (b"", "EOF"),
    (b"SSH-2.0-OpenSSH\r\n", 'malformed HTTP response "SSH-2.0-OpenSSH\\r\\n"'),
    (b"HTTP/1.1 abc\r\n\r\n", 'malformed HTTP response "HTTP/1.1 abc"'),
])
def test_a_malformed_answer(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=r"^(EOF|malformed HTTP response .*)$") as info:
        parse_http_response(data, eof=True)
    assert str(info.value) == message


def test_200_to_399_pass() -> None:
    assert http_outcome(HTTPResponse(200, b"fine")) == Outcome(True, "fine")
    assert http_outcome(HTTPResponse(302, b"")).success
    assert http_outcome(HTTPResponse(199, b"")) == Outcome(False, "HTTP probe failed with statuscode: 199")
    assert http_outcome(HTTPResponse(500, b"")) == Outcome(False, "HTTP probe failed with statuscode: 500")


def test_grpc_health_messages() -> None:
    assert grpcprobe.encode_request("") == b""
    assert grpcprobe.encode_request("svc") == b"\x0a\x03svc"
    assert grpcprobe.encode_request("x" * 200)[:3] == b"\x0a\xc8\x01"
    assert grpcprobe.decode_status(b"") == 0
    assert grpcprobe.decode_status(b"\x08\x01") == 1
    assert grpcprobe.decode_status(b"\x12\x01z\x08\x02") == 2, "unknown fields are skipped"
    with pytest.raises(ValueError, match="truncated"):
        grpcprobe.decode_status(b"\x08")


# --- the checks, on loopback ------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(1)
        code = 200 if self.path in ("/ok", "/slow") else 500
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def run(container: Container, handlers: dict[str, ProbeHandler], timeout: float = 0.3) -> dict[str, Outcome]:
    context = ExecContext(env={"PATH": "/usr/bin:/bin"}, cwd="/", uid=os.getuid(), gid=os.getgid())
    checks: Checks[str] = Checks()
    now = time.monotonic()
    for key, handler in handlers.items():
        checks.start(key, start_check(container, handler, timeout, now, context))
    results: dict[str, Outcome] = {}
    deadline = now + 5
    while checks.running and time.monotonic() < deadline:
        results.update(checks.wait(0.05, time.monotonic))
    checks.close()
    return results


def test_http_tcp_and_exec_checks(server: int) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        free = closed.getsockname()[1]
    container = Container(name="app", command=("app",), ports=(ContainerPort(server, name="http"),))
    results = run(container, {
        "http-ok": HTTPGetAction(port="http", path="/ok"),
        "http-500": HTTPGetAction(port=server, path="/bad"),
        "http-refused": HTTPGetAction(port=free, path="/ok"),
        "tcp-ok": TCPSocketAction(port="http"),
        "tcp-refused": TCPSocketAction(port=free, host="localhost"),
        "exec-ok": ExecAction(("true",)),
        "exec-fail": ExecAction(("sh", "-c", "echo not yet; exit 3")),
        "exec-missing": ExecAction(("/nonexistent/probe",)),
    })
    assert results == {
        "http-ok": Outcome(True, "hi"),
        "http-500": Outcome(False, "HTTP probe failed with statuscode: 500"),
        "http-refused": Outcome(False, f'Get "http://127.0.0.1:{free}/ok": dial tcp 127.0.0.1:{free}: connect: '
                                       "connection refused"),
        "tcp-ok": Outcome(True),
        "tcp-refused": Outcome(False, f"dial tcp 127.0.0.1:{free}: connect: connection refused"),
        "exec-ok": Outcome(True),
        "exec-fail": Outcome(False, "not yet"),
        "exec-missing": Outcome(False, 'cannot run "/nonexistent/probe": No such file or directory'),
    }


def test_timeouts_end_an_attempt_without_blocking(server: int) -> None:
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        start = time.monotonic()
        results = run(Container(name="app", command=("app",)), {
            "http-silent": HTTPGetAction(port=port),
            "http-slow": HTTPGetAction(port=server, path="/slow"),
            "exec-slow": ExecAction(("sleep", "5")),
        }, timeout=0.3)
        took = time.monotonic() - start
    assert results == {
        "http-silent": Outcome(False, f'Get "http://127.0.0.1:{port}/": context deadline exceeded '
                                      "(Client.Timeout exceeded while awaiting headers)"),
        "http-slow": Outcome(False, f'Get "http://127.0.0.1:{server}/slow": context deadline exceeded '
                                    "(Client.Timeout exceeded while awaiting headers)"),
        "exec-slow": Outcome(False, 'command "sleep 5" timed out'),
    }
    assert took < 1.0, f"the attempts ran side by side and ended at their timeout ({took:.2f}s)"


def test_https_to_a_plain_server_fails_with_the_tls_error(server: int) -> None:
    outcome = run(Container(name="app", command=("app",)), {"x": HTTPGetAction(port=server, scheme="HTTPS")})["x"]
    assert not outcome.success
    assert outcome.message.startswith(f'Get "https://127.0.0.1:{server}/": TLS: '), outcome.message
