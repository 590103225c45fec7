"""The node agent's Prometheus metrics and their HTTP endpoint (Istio's monitoring port 15014).

Names follow Istio where Istio has the metric (``istio_cni_installs_total``,
``istio_cni_install_ready``, ``istio_cni_repair_pods_repaired_total``); the plugin request count,
the ADD latency histogram and the agent's start-to-ready time are weir's own (``weir_cni_*``),
the metrics users asked Istio for in istio/istio#60472.

Every :class:`Metrics` has its own ``CollectorRegistry`` (never the library's global one), so two
agents in one process or two tests never share counts. Label values are closed sets (the enums
below); an unknown value is a programming error (``ValueError``), never a new time series. All
known label combinations are created at zero, so ``rate()`` and alerts see them from the start.

:class:`MetricsServer` serves ``GET /metrics`` (text or OpenMetrics, as the scraper asks) from a
daemon thread, like the health server (see ``health.py`` for start/stop semantics). The
``*_created`` samples ``prometheus_client`` adds to counters and histograms are left out of the
exposition, as Istio's agent has none (the library's own switch for that is process-global).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from weir.nodeagent.health import EndpointServer, Response
from weir.nodeagent.settings import Source

DEFAULT_MONITORING_PORT = 15014
# CNI ADD latency: 5 ms (an excluded pod answered from the cache) to 5 s (a pod the agent waited
# for); the plugin's own timeout is beyond the last bucket and lands in +Inf.
ADD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class InstallResult(enum.StrEnum):
    """``istio_cni_installs_total{result}``: Istio's values."""

    SUCCESS = "SUCCESS"
    COPY_BINARIES_FAILURE = "COPY_BINARIES_FAILURE"
    CREATE_KUBECONFIG_FAILURE = "CREATE_KUBECONFIG_FAILURE"
    CREATE_CNI_CONFIG_FAILURE = "CREATE_CNI_CONFIG_FAILURE"


class RepairType(enum.StrEnum):
    """``istio_cni_repair_pods_repaired_total{type}``: Istio's values."""

    REPAIR = "repair"
    DELETE = "delete"
    LABEL = "label"


class RepairResult(enum.StrEnum):
    """``istio_cni_repair_pods_repaired_total{result}``: Istio's values."""

    SUCCESS = "success"
    FAIL = "fail"
    SKIP = "skip"


class PluginCommand(enum.StrEnum):
    """The CNI verbs that reach the agent (VERSION never does)."""

    ADD = "ADD"
    DEL = "DEL"
    CHECK = "CHECK"
    GC = "GC"
    STATUS = "STATUS"


class PluginResult(enum.StrEnum):
    SUCCESS = "success"
    ERROR = "error"


class Metrics:
    """The agent's metrics. Call, from any thread:

    - ``started()`` when the process starts (construction counts as a start too);
    - ``install_result(result)`` after each install pass (``InstallResult`` or its value);
    - ``set_ready(bool)`` whenever install readiness changes (``istio_cni_install_ready``);
    - ``became_ready()`` when the agent first reports ready (later calls are ignored);
    - ``plugin_request(command, result, seconds)`` per plugin event; ADD durations feed the histogram;
    - ``repair(kind, result)`` per repair decision.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._ready_recorded = False
        r = self.registry
        self.installs = Counter("istio_cni_installs_total", "Total installations of the CNI plugin and its "
                                "configuration, by result.", ["result"], registry=r)
        self.install_ready = Gauge("istio_cni_install_ready", "Whether the CNI plugin and its configuration "
                                   "are installed and valid (1) or not (0).", registry=r)
        self.plugin_requests = Counter("weir_cni_plugin_requests_total", "Requests from the weir-cni plugin "
                                       "to the node agent, by CNI command and result.", ["command", "result"],
                                       registry=r)
        self.add_duration = Histogram("weir_cni_add_duration_seconds", "Time the node agent took to answer a "
                                      "CNI ADD (pod lookup, decision and capture rules).", buckets=ADD_BUCKETS,
                                      registry=r)
        self.start_to_ready = Gauge("weir_cni_agent_start_to_ready_seconds", "Seconds from the node agent's "
                                    "start to its first readiness (0 until then).", registry=r)
        self.repaired = Counter("istio_cni_repair_pods_repaired_total", "Pods the repair controller acted on, "
                                "by action type and result.", ["type", "result"], registry=r)
        for result in InstallResult:
            self.installs.labels(result=result.value)
        for command in PluginCommand:
            for outcome in PluginResult:
                self.plugin_requests.labels(command=command.value, result=outcome.value)
        for kind in RepairType:
            for repair_result in RepairResult:
                self.repaired.labels(type=kind.value, result=repair_result.value)
        self.install_ready.set(0)

    def install_result(self, result: InstallResult | str) -> None:
        self.installs.labels(result=InstallResult(result).value).inc()

    def set_ready(self, ready: bool) -> None:
        self.install_ready.set(1 if ready else 0)

    def plugin_request(self, command: PluginCommand | str, result: PluginResult | str,
                       seconds: float | None = None) -> None:
        verb = PluginCommand(command)
        self.plugin_requests.labels(command=verb.value, result=PluginResult(result).value).inc()
        if verb is PluginCommand.ADD and seconds is not None:
            if seconds < 0:
                raise ValueError(f"ADD duration must not be negative, got {seconds}")
            self.add_duration.observe(seconds)

    def started(self) -> None:
        with self._lock:
            self._start = self._clock()
            self._ready_recorded = False
            self.start_to_ready.set(0)

    def became_ready(self) -> None:
        with self._lock:
            if self._ready_recorded:
                return
            self._ready_recorded = True
            self.start_to_ready.set(max(0.0, self._clock() - self._start))

    def repair(self, kind: RepairType | str, result: RepairResult | str) -> None:
        self.repaired.labels(type=RepairType(kind).value, result=RepairResult(result).value).inc()

    def exposition(self, accept: str = "") -> tuple[str, bytes]:
        """(content type, body) of the registry, in the format ``accept`` asks for."""
        encoder, content_type = choose_encoder(accept)
        return content_type, encoder(_WithoutCreated(self.registry))


class _WithoutCreated:
    """A read-only view of a registry without the ``*_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class MetricsServer(EndpointServer):
    """``GET /metrics`` for ``metrics`` on ``host:port`` (default all IPv4 addresses, port 15014)."""

    def __init__(self, metrics: Metrics, host: str = "0.0.0.0", port: int = DEFAULT_MONITORING_PORT) -> None:
        self.metrics = metrics
        super().__init__({"/metrics": self._scrape}, host, port, name="metrics")

    def _scrape(self, headers: Mapping[str, str]) -> Response:
        content_type, body = self.metrics.exposition(headers.get("accept", "") or "")
        return 200, content_type, body


def monitoring_port(flags: Mapping[str, str | None], env: Mapping[str, str]) -> int:
    """The metrics port as Istio's agent reads it: ``--monitoring-port``, else ``MONITORING_PORT``,
    else 15014. A bad value is a ``ConfigError`` naming the flag or variable."""
    return Source(flags, env).integer("monitoring-port", "MONITORING_PORT", DEFAULT_MONITORING_PORT,
                                      minimum=0, maximum=65535)
