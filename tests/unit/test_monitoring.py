"""Metrics: names, labels and values as a Prometheus scraper sees them, over a real socket."""

from __future__ import annotations

import http.client
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from weir.nodeagent.monitoring import (
    ADD_BUCKETS,
    InstallResult,
    Metrics,
    MetricsServer,
    monitoring_port,
)
from weir.nodeagent.settings import ConfigError


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition()[1].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def scrape(port: int, path: str = "/metrics", accept: str | None = None) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


@pytest.fixture
def served() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics()
    server = MetricsServer(metrics, host="127.0.0.1", port=0)
    _, port = server.start()
    yield metrics, port
    server.stop()


def test_every_known_series_exists_at_zero() -> None:
    got = samples(Metrics())
    for result in ("SUCCESS", "COPY_BINARIES_FAILURE", "CREATE_KUBECONFIG_FAILURE", "CREATE_CNI_CONFIG_FAILURE"):
        assert got[("istio_cni_installs_total", (("result", result),))] == 0
    assert got[("istio_cni_install_ready", ())] == 0
    assert got[("weir_cni_agent_start_to_ready_seconds", ())] == 0
    for kind in ("repair", "delete", "label"):
        for result in ("success", "fail", "skip"):
            assert got[("istio_cni_repair_pods_repaired_total", (("result", result), ("type", kind)))] == 0
    for command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        for result in ("success", "error"):
            assert got[("weir_cni_plugin_requests_total", (("command", command), ("result", result)))] == 0
    assert got[("weir_cni_add_duration_seconds_count", ())] == 0
    assert not [name for name, _ in got if name.endswith("_created")]


def test_two_instances_do_not_share_counts() -> None:
    a, b = Metrics(), Metrics()
    a.install_result(InstallResult.SUCCESS)
    assert value(a, "istio_cni_installs_total", result="SUCCESS") == 1
    assert value(b, "istio_cni_installs_total", result="SUCCESS") == 0


def test_install_results_and_readiness() -> None:
    m = Metrics()
    m.install_result("SUCCESS")
    m.install_result(InstallResult.CREATE_CNI_CONFIG_FAILURE)
    m.install_result("SUCCESS")
    assert value(m, "istio_cni_installs_total", result="SUCCESS") == 2
    assert value(m, "istio_cni_installs_total", result="CREATE_CNI_CONFIG_FAILURE") == 1
    m.set_ready(True)
    assert value(m, "istio_cni_install_ready") == 1
    m.set_ready(False)
    assert value(m, "istio_cni_install_ready") == 0


def test_plugin_requests_and_the_add_histogram() -> None:
    m = Metrics()
    for seconds in (0.003, 0.007, 0.2, 4.0, 9.0):
        m.plugin_request("ADD", "success", seconds)
    m.plugin_request("ADD", "error", 0.02)
    m.plugin_request("DEL", "success", 1.5)  # only ADD feeds the histogram
    m.plugin_request("STATUS", "error")
    assert value(m, "weir_cni_plugin_requests_total", command="ADD", result="success") == 5
    assert value(m, "weir_cni_plugin_requests_total", command="ADD", result="error") == 1
    assert value(m, "weir_cni_plugin_requests_total", command="DEL", result="success") == 1
    assert value(m, "weir_cni_plugin_requests_total", command="STATUS", result="error") == 1
    assert value(m, "weir_cni_add_duration_seconds_count") == 6
    assert value(m, "weir_cni_add_duration_seconds_sum") == pytest.approx(13.23)
    cumulative = {"0.005": 1, "0.01": 2, "0.025": 3, "0.25": 4, "5.0": 5, "+Inf": 6}
    for le, count in cumulative.items():
        assert value(m, "weir_cni_add_duration_seconds_bucket", le=le) == count
    buckets = {float(le) for (name, labels) in samples(m) if name == "weir_cni_add_duration_seconds_bucket"
               for key, le in labels if key == "le"}
    assert buckets == {*ADD_BUCKETS, float("inf")}
    assert min(ADD_BUCKETS) == 0.005
    assert max(ADD_BUCKETS) == 5.0


def test_start_to_ready_is_recorded_once() -> None:
    clock = FakeClock(100.0)
    m = Metrics(clock=clock)
    clock.now = 102.5
    m.became_ready()
    assert value(m, "weir_cni_agent_start_to_ready_seconds") == 2.5
    clock.now = 110.0
    m.became_ready()  # a later flap back to ready is not a new start
    assert value(m, "weir_cni_agent_start_to_ready_seconds") == 2.5
    m.started()
    assert value(m, "weir_cni_agent_start_to_ready_seconds") == 0
    clock.now = 110.25
    m.became_ready()
    assert value(m, "weir_cni_agent_start_to_ready_seconds") == 0.25


def test_repairs() -> None:
    m = Metrics()
    m.repair("repair", "success")
    m.repair("label", "skip")
    m.repair("label", "skip")
    assert value(m, "istio_cni_repair_pods_repaired_total", type="repair", result="success") == 1
    assert value(m, "istio_cni_repair_pods_repaired_total", type="label", result="skip") == 2


@pytest.mark.parametrize(("call", "args"), [
    ("install_result", ("success",)),  # Istio's values are upper case
    ("plugin_request", ("VERSION", "success")),
    ("plugin_request", ("ADD", "captured")),
    ("repair", ("restart", "success")),
    ("repair", ("repair", "ok")),
])
def test_unknown_label_values_are_refused(call: str, args: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="is not a valid"):
        getattr(Metrics(), call)(*args)


def test_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Metrics().plugin_request("ADD", "success", -0.1)


def test_scrape_over_http(served: tuple[Metrics, int]) -> None:
    metrics, port = served
    metrics.install_result("SUCCESS")
    metrics.set_ready(True)
    status, content_type, text = scrape(port)
    assert status == 200
    assert content_type.startswith("text/plain")
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}
    assert got[("istio_cni_installs_total", (("result", "SUCCESS"),))] == 1
    assert got[("istio_cni_install_ready", ())] == 1


def test_openmetrics_when_asked(served: tuple[Metrics, int]) -> None:
    _, port = served
    status, content_type, text = scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")
    assert "_created" not in text


def test_only_metrics_is_served(served: tuple[Metrics, int]) -> None:
    _, port = served
    assert scrape(port, "/")[0] == 404
    assert scrape(port, "/readyz")[0] == 404


def test_stop_then_start_a_new_server_on_the_same_port() -> None:
    metrics = Metrics()
    first = MetricsServer(metrics, host="127.0.0.1", port=0)
    _, port = first.start()
    first.stop()
    second = MetricsServer(metrics, host="127.0.0.1", port=port)
    assert second.start()[1] == port
    assert scrape(port)[0] == 200
    second.stop()


@pytest.mark.parametrize(("flags", "env", "expected"), [
    ({}, {}, 15014),
    ({}, {"MONITORING_PORT": "9090"}, 9090),
    ({"monitoring_port": "0"}, {"MONITORING_PORT": "9090"}, 0),
])
def test_monitoring_port(flags: dict[str, str | None], env: dict[str, str], expected: int) -> None:
    assert monitoring_port(flags, env) == expected


@pytest.mark.parametrize("bad", ["http", "70000", "-1", "15014.5"])
def test_bad_monitoring_port_names_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match=f"MONITORING_PORT: invalid value '{bad}'"):
        monitoring_port({}, {"MONITORING_PORT": bad})
