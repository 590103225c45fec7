"""The node agent's health endpoints (Istio's istio-cni-node, readiness port 8000), and the small
threaded HTTP server they and the metrics endpoint (``monitoring.py``) run on.

- ``GET /healthz``: always 200 while the process serves HTTP (the DaemonSet's livenessProbe).
- ``GET /readyz``: 200 only while the ``ready`` callable returns True, else 503 with the reason in
  the body (the readinessProbe). Istio's agent is ready when the CNI config is installed *and*
  its event server is up; :class:`Readiness` keeps such named gates.

The servers run on their own daemon threads (``ThreadingHTTPServer``), not on the agent's event
loop: ``start()`` binds and returns at once, ``stop()`` waits at most ~0.1 s for the accept loop
plus ``timeout`` for the thread. ``ready`` and ``reason`` are therefore called from server
threads and must be thread-safe and quick (read a flag; never do I/O). From asyncio code, call
``stop()`` through ``asyncio.to_thread`` if a 0.1 s block matters.

This module knows nothing about what makes the agent ready; it only asks.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("weir.nodeagent")

READINESS_PORT = 8000  # Istio's constants.ReadinessPort; the chart's probes use it
_POLL_INTERVAL = 0.1
_TEXT = "text/plain; charset=utf-8"

# A route gets the request headers (names lower-cased) and returns (status, content type, body).
Response = tuple[int, str, bytes]
Route = Callable[[Mapping[str, str]], Response]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() is bounded even if a request is stuck


class EndpointServer:
    """Serve a fixed table of GET routes on ``host:port`` from a daemon thread.

    ``port=0`` picks a free port; :attr:`address` gives the one bound. Methods other than
    GET/HEAD get 405, other paths 404; an exception in a route is logged and answered with 500.
    """

    def __init__(self, routes: Mapping[str, Route], host: str = "0.0.0.0", port: int = READINESS_PORT,
                 name: str = "http") -> None:
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self.name = name
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); before start(), the configured ones."""
        if self._server is None:
            return self.host, self.port
        bound = self._server.server_address
        return str(bound[0]), int(bound[1])

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> tuple[str, int]:
        """Bind and serve in the background; an ``OSError`` (port in use ...) is raised here."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} server already started")
        server_class = type("_BoundServer", (_Server,), {
            "address_family": socket.AF_INET6 if ":" in self.host else socket.AF_INET,
        })
        self._server = server_class((self.host, self.port), _handler_for(self.routes, self.name))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(_POLL_INTERVAL,),
                                        name=f"weir-{self.name}-http", daemon=True)
        self._thread.start()
        host, port = self.address
        log.info("%s endpoint on %s", self.name, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return host, port

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close the socket and join the thread. Safe to call twice or unstarted."""
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s server thread did not stop within %.1fs", self.name, timeout)

    def __enter__(self) -> EndpointServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _handler_for(routes: Mapping[str, Route], name: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # a silent client cannot hold a thread forever
        server_version = "weir-node-agent"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            path = self.path.split("?", 1)[0]
            route = routes.get(path)
            if route is None:
                status, ctype, body = 404, _TEXT, f"no such endpoint {path}\n".encode()
            else:
                try:
                    status, ctype, body = route({k.lower(): v for k, v in self.headers.items()})
                except Exception:  # the probe gets an answer; the agent's log gets the cause
                    log.exception("%s endpoint %s failed", name, path)
                    status, ctype, body = 500, _TEXT, b"internal error\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def _not_allowed(self) -> None:
            body = f"{self.command} not allowed\n".encode()
            self.send_response(405)
            self.send_header("Allow", "GET, HEAD")
            self.send_header("Content-Type", _TEXT)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s: " + format, name, self.client_address[0], *args)

    return Handler


class Readiness:
    """Named gates that must all be open for the agent to be ready (thread-safe).

    ``Readiness("install", "plugin-server")`` starts with every gate closed ("starting");
    ``open(gate)`` / ``close(gate, reason)`` move them. Pass the object itself as the health
    server's ``ready`` and its :meth:`reason` as ``reason``.
    """

    def __init__(self, *gates: str) -> None:
        if not gates:
            raise ValueError("Readiness needs at least one gate")
        self._gates = frozenset(gates)
        self._lock = threading.Lock()
        self._closed: dict[str, str] = dict.fromkeys(gates, "starting")

    def open(self, gate: str) -> None:
        with self._lock:
            self._check(gate)
            self._closed.pop(gate, None)

    def close(self, gate: str, reason: str) -> None:
        with self._lock:
            self._check(gate)
            self._closed[gate] = reason or "not ready"

    def __call__(self) -> bool:
        with self._lock:
            return not self._closed

    def reason(self) -> str:
        with self._lock:
            return "; ".join(f"{gate}: {why}" for gate, why in self._closed.items()) or "ready"

    def _check(self, gate: str) -> None:
        if gate not in self._gates:
            raise KeyError(f"unknown readiness gate {gate!r}")


class HealthServer(EndpointServer):
    """``/healthz`` (always 200) and ``/readyz`` (200 while ``ready()``; else 503 and ``reason()``)."""

    def __init__(self, ready: Callable[[], bool], reason: Callable[[], str] | None = None,
                 host: str = "0.0.0.0", port: int = READINESS_PORT) -> None:
        self.ready = ready
        self.reason = reason or (lambda: "not ready")
        super().__init__({"/healthz": self._healthz, "/readyz": self._readyz}, host, port, name="health")

    @staticmethod
    def _healthz(_: Mapping[str, str]) -> Response:
        return 200, _TEXT, b"ok\n"

    def _readyz(self, _: Mapping[str, str]) -> Response:
        try:
            if self.ready():
                return 200, _TEXT, b"ready\n"
            why = self.reason()
        except Exception as exc:  # a broken check means not ready, and says why
            log.exception("readiness check failed")
            why = f"readiness check failed: {exc}"
        return 503, _TEXT, f"not ready: {why}\n".encode()
