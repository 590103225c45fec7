"""The sidecar agent's status server (pilot-agent's ``:15020``), which Envoy's ``:15021`` fronts.

Two endpoints, as Istio serves them:

- ``GET /healthz/ready``: 200 only when Envoy's admin ``/ready`` says ``LIVE`` and SDS holds a
  workload certificate; 503 with the reason in the body otherwise (Envoy's static listener on
  ``:15021`` routes ``/healthz/ready`` here, so kubelet probes either port);
- ``GET /stats/prometheus``: Envoy's own ``/stats/prometheus`` (from its admin) followed by the
  agent's metrics (``weir_agent_*``), one scrape for both. When the admin does not answer, the
  agent's metrics alone are served, as pilot-agent does.

The decisions (:func:`readiness`, :func:`merge_metrics`) are pure; :class:`StatusServer` is the
driver: weir's small HTTP server (:mod:`weir.platform.httpserve`) and admin requests made on a
worker thread. :class:`AgentMetrics` reads its values through callables when scraped, from
its own registry. This module must not know how Envoy, SDS or DNS are run.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 (the status server's driver)
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from weir.agent.bootstrap import STATUS_PORT, TcpAddress
from weir.platform.httpserve import Answer, HttpServer

log = logging.getLogger(__name__)

READY_PATH: Final = "/healthz/ready"
STATS_PATH: Final = "/stats/prometheus"
TEXT_FORMAT: Final = "text/plain; version=0.0.4; charset=utf-8"


# ---- decisions, pure -------------------------------------------------------------------------


def readiness(state: str | None, has_secret: bool, admin: str = "Envoy's admin") -> Answer:
    """``/healthz/ready`` from Envoy's server state (``None``: the admin did not answer) and
    whether SDS has a certificate to serve."""
    if state is None:
        return Answer(503, f"Envoy is not ready: {admin} does not answer\n")
    if state != "LIVE":
        hint = (" (config not received from the XDS server: is the control plane running?)"
                if state in ("PRE_INITIALIZING", "INITIALIZING") else "")
        return Answer(503, f"Envoy is not ready: server state {state}{hint}\n")
    if not has_secret:
        return Answer(503, "not ready: no workload certificate yet (SDS has nothing to serve)\n")
    return Answer(200, "")


def merge_metrics(envoy: str, agent: str) -> str:
    """Envoy's exposition text, then the agent's (distinct prefixes: ``envoy_`` and ``weir_agent_``)."""
    parts = [p if p.endswith("\n") else p + "\n" for p in (envoy, agent) if p.strip()]
    return "".join(parts)


# ---- the agent's metrics ---------------------------------------------------------------------


class AgentMetrics(Collector):
    """The agent's own metrics, read at scrape time through the callables (``None``: absent)."""

    def __init__(self, *, envoy_restarts: Callable[[], int] = lambda: 0,
                 cert_expiry: Callable[[], float | None] = lambda: None,
                 dns_requests: Callable[[], int] | None = None) -> None:
        self._envoy_restarts = envoy_restarts
        self._cert_expiry = cert_expiry
        self._dns_requests = dns_requests
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("weir_agent_envoy_restarts", "Times the agent restarted Envoy after it exited.",
                                  value=self._envoy_restarts())
        expiry = self._cert_expiry()
        if expiry is not None:
            yield GaugeMetricFamily("weir_agent_cert_expiry_timestamp_seconds",
                                    "When the workload certificate served over SDS expires (Unix time).",
                                    value=expiry)
        if self._dns_requests is not None:
            yield CounterMetricFamily("weir_agent_dns_requests", "DNS queries the agent's DNS proxy received.",
                                      value=self._dns_requests())

    def render(self) -> str:
        text = generate_latest(self.registry).decode()
        # prometheus_client adds *_created samples to counters; Istio's agent exports none.
        return "".join(line + "\n" for line in text.splitlines() if "_created" not in line.split(" ", 1)[0])


# ---- the driver ------------------------------------------------------------------------------


class StatusServer:
    """Serves ``/healthz/ready`` and ``/stats/prometheus`` on ``host:port`` (0: any free port)."""

    def __init__(self, admin: TcpAddress, metrics: AgentMetrics, has_secret: Callable[[], bool], *,
                 host: str = "127.0.0.1", port: int = STATUS_PORT, admin_timeout: float = 1.0) -> None:
        self.admin = admin
        self.metrics = metrics
        self.has_secret = has_secret
        self.admin_timeout = admin_timeout
        self._server = HttpServer(self._handle, host, port)
        # Admin requests never go through an HTTP proxy from the environment.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port once started with port 0)."""
        return self.host, self.port

    async def start(self) -> None:
        await self._server.start()
        log.info("status server on %s:%d", self.host, self.port)

    async def stop(self, grace: float = 2.0) -> None:
        await self._server.stop(grace)

    # -- endpoints

    def _admin_get(self, path: str) -> tuple[int, str] | None:
        """(status, body) from Envoy's admin, or ``None`` when it does not answer."""
        try:
            with self._http.open(f"http://{self.admin}{path}", timeout=self.admin_timeout) as response:
                return int(response.status), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:  # /ready answers 503 with the state in the body
            with exc:
                return exc.code, exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError):
            return None

    async def _handle(self, path: str, _query: str) -> Answer:
        return await self.answer(path)

    async def answer(self, path: str) -> Answer:
        """The answer to ``GET path``."""
        if path == READY_PATH:
            got = await asyncio.to_thread(self._admin_get, "/ready")
            state = (got[1].strip() or None) if got is not None else None
            return readiness(state, self.has_secret(), f"Envoy's admin {self.admin}")
        if path == STATS_PATH:
            got = await asyncio.to_thread(self._admin_get, STATS_PATH)
            envoy = got[1] if got is not None and got[0] == 200 else ""
            if not envoy:
                log.warning("Envoy's admin %s gave no stats; serving the agent's metrics alone", self.admin)
            return Answer(200, merge_metrics(envoy, self.metrics.render()), TEXT_FORMAT)
        return Answer(404, f"no such endpoint: {path}\n")
