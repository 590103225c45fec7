"""bench/dataplane*.py, the pure parts: h2load's command lines, summary and per-request log,
latency after the warm-up, /proc parsing, per-role accounting, the rounds' summary, perf's
output, and the lab's files (the manifests go through weir's own strict loader)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import dataplane  # noqa: E402
import dataplane_load as load  # noqa: E402
import dataplane_mesh as mesh  # noqa: E402
import dataplane_profile as profile  # noqa: E402

from weir.api.load import load_documents  # noqa: E402

H2LOAD_OUT = """starting benchmark...
spawning thread #0: 16 total client(s). Timing-based test with 0s of warm-up time and 5s of main duration
Application protocol: http/1.1
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 5.00s, 1001.60 req/s, 1.12MB/s
requests: 5008 total, 5008 started, 5008 done, 5008 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 5008 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 5.60MB (5875610) total, 668.00KB (684036) headers (space savings 0.00%), 4.89MB (5128192) data
                     min         max         mean         sd        +/- sd
time for request:      651us      1.77ms       702us        90us    91.00%
"""


def test_paced_argv_spreads_the_rate_over_the_connections() -> None:
    argv = load.paced_argv("http://a:8080/", "/p", "/log", 30, 1000, 16)
    assert argv[:2] == ["h2load", "--h1"]
    assert argv[argv.index("--rps") + 1] == "62.5"
    assert argv[argv.index("-c") + 1] == "16"
    assert argv[argv.index("-D") + 1] == "30"
    assert argv[argv.index("--log-file") + 1] == "/log"
    assert argv[-1] == "http://a:8080/"


def test_saturating_argv_has_no_pacing_and_no_more_threads_than_connections() -> None:
    argv = load.saturating_argv("http://a/", "/p", 8, 1, 2)
    assert "--rps" not in argv
    assert "--log-file" not in argv
    assert argv[argv.index("-t") + 1] == "1"


def test_serial_argv_is_one_connection_with_a_request_count() -> None:
    argv = load.serial_argv("http://a/", "/p", "/log", 3000)
    assert argv[argv.index("-c") + 1] == "1"
    assert argv[argv.index("-n") + 1] == "3000"
    assert "--rps" not in argv
    with pytest.raises(ValueError, match="must be positive"):
        load.serial_argv("http://a/", "/p", "/log", 0)


@pytest.mark.parametrize("bad", [(0, 16), (1000, 0)])
def test_paced_argv_refuses_non_positive_settings(bad: tuple[float, int]) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        load.paced_argv("http://a/", "/p", "/log", 30, bad[0], bad[1])


def test_parse_h2load_reads_the_summary() -> None:
    s = load.parse_h2load(H2LOAD_OUT)
    assert s.seconds == 5.0
    assert s.req_per_s == 1001.6
    assert (s.total, s.started, s.done, s.succeeded) == (5008, 5008, 5008, 5008)
    assert s.status == {"2xx": 5008, "3xx": 0, "4xx": 0, "5xx": 0}
    assert s.data_bytes == 5128192
    assert s.problems() == []


def test_parse_h2load_reads_milliseconds_and_names_failures() -> None:
    text = H2LOAD_OUT.replace("finished in 5.00s", "finished in 250.5ms").replace(
        "0 failed, 0 errored", "3 failed, 1 errored").replace("5008 2xx, 0 3xx, 0 4xx, 0 5xx",
                                                             "5000 2xx, 0 3xx, 0 4xx, 8 5xx")
    s = load.parse_h2load(text)
    assert s.seconds == pytest.approx(0.2505)
    assert s.problems() == ["3 failed", "1 errored", "8 5xx responses"]


def test_parse_h2load_names_the_missing_line() -> None:
    with pytest.raises(ValueError, match=r"no 'finished' line") as caught:
        load.parse_h2load("starting benchmark...\nconnect error\n")
    assert "connect error" in str(caught.value)


def test_parse_log_and_latency_drop_the_warmup_and_non_2xx() -> None:
    start = 1_700_000_000_000_000
    lines = [f"{start + i * 1000}\t{200 if i != 1500 else 503}\t{1000 + i}" for i in range(3000)]
    rows = load.parse_log("\n".join(lines) + "\n")
    assert len(rows) == 3000
    lat = load.latency(rows, 1.0)
    assert lat.dropped_warmup == 1000
    assert lat.not_2xx == 1
    assert lat.n == 1999
    assert lat.p50 == pytest.approx((1000 + 1999.5) / 1000, abs=0.002)
    assert lat.max == pytest.approx(3.999)
    assert lat.rate == pytest.approx(1000, rel=1e-3)


def test_parse_log_names_a_bad_line() -> None:
    with pytest.raises(ValueError, match="line 2"):
        load.parse_log("1\t200\t3\nnot a line\n")


def test_latency_without_requests_after_the_warmup_fails() -> None:
    with pytest.raises(ValueError, match="no 2xx request"):
        load.latency([load.Request(0, 500, 10)], 0)


def test_parse_stat_copes_with_spaces_and_parentheses_in_the_command() -> None:
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", str(3 * load.CLK_TCK), str(load.CLK_TCK)]
    text = "1234 (wrk:worker (0) x) " + " ".join(fields + ["0"] * 30)
    assert load.parse_stat(text) == (3.0, 1.0)


def test_parse_status_reads_rss_and_hwm() -> None:
    assert load.parse_status("Name:\tenvoy\nVmHWM:\t  71072 kB\nVmRSS:\t   70636 kB\n") == (70636, 71072)
    with pytest.raises(ValueError, match="VmRSS"):
        load.parse_status("Name:\tkthreadd\n")


def test_group_usage_adds_processes_of_one_role() -> None:
    g = load.GroupUsage([load.Usage("nginx", 1, 0.5, 10, 12), load.Usage("nginx", 2, 0.5, 20, 22),
                         load.Usage("envoy", 4, 1, 100, 110)], rss_peak_kib=130)
    roles = g.by_role()
    assert roles["nginx"].cpu_s == 4
    assert roles["nginx"].rss_peak_kib == 30
    assert g.cpu_s == 9


def _paced(p50: float, p90: float, p99: float, proxies: dict[str, Any]) -> dict[str, Any]:
    return {"latency_ms": {"p50": p50, "p90": p90, "p99": p99}, "proxies": proxies}


def _side(vcpu: float, role: str) -> dict[str, Any]:
    return {"vcpu_per_1000_rps": vcpu, "rss_peak_mib": 50.0,
            "roles": {role: {"user_s": 3.0, "sys_s": 1.0, "vcpu_per_1000_rps": vcpu, "rss_peak_mib": 50.0,
                             "hwm_mib": 51.0}}}


def test_summarize_takes_medians_of_rounds_and_pairs_each_round_with_direct() -> None:
    def sat(rps: float) -> dict[str, Any]:
        return {"req_per_s": rps, "vcpu": {"nginx": 0.5, "h2load": 0.5}}

    runs = {
        "direct": {"paced": [_paced(1, 2, 3, {}), _paced(2, 3, 4, {}), _paced(1, 2, 30, {})],
                   "saturated": [sat(10000), sat(12000), sat(11000)]},
        "weir": {"paced": [_paced(3, 5, 9, {"client": _side(0.2, "envoy"), "server": _side(0.2, "envoy")})] * 3,
                 "saturated": [sat(2000)] * 3},
        "haproxy": {"paced": [_paced(2, 3, 5, {"client": _side(0.05, "haproxy"),
                                               "server": _side(0.05, "haproxy")})] * 3,
                    "saturated": [sat(5000)] * 3},
    }
    s = dataplane.summarize(runs, {"direct": [1.0, 2.0], "weir": [3.0], "haproxy": [2.0]},
                            {"direct": "d", "weir": "w", "haproxy": "h"})
    assert s["latency_ms_median_of_rounds"]["direct"] == {"p50": 1, "p90": 2, "p99": 4}
    assert s["added_ms_median_of_rounds"]["weir"] == {"p50": 2, "p90": 3, "p99": 5}  # 6, 5, -21
    assert s["max_req_per_s_median_of_rounds"]["direct"] == 11000
    assert s["pair_vcpu_per_1000_rps"]["weir"] == pytest.approx(0.4)
    assert s["ratios"]["weir_pair_cpu_over_haproxy_pair"] == pytest.approx(4.0)
    assert s["ratios"]["max_rps_weir_over_haproxy"] == pytest.approx(0.4)
    assert s["proxy_cost"]["weir"]["client"]["roles"]["envoy"]["sys_share"] == pytest.approx(0.25)
    json.dumps(s)  # goes into the results file as is


def test_rotations_start_each_round_with_the_next_path() -> None:
    routes = [mesh.Route(k, k, "ns", "client", "u") for k in ("a", "b", "c")]
    order = [[r.key for r in one] for one in dataplane.rotations(routes, 4)]
    assert order == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_the_manifests_pass_weirs_strict_loader(tmp_path: Path) -> None:
    docs = [*mesh.manifests(tmp_path), mesh.plain_client(tmp_path)]
    resources = load_documents(yaml.safe_dump_all(docs), "dataplane.yaml", lambda t: list(yaml.safe_load_all(t)))
    kinds = sorted(f"{r.kind}/{r.metadata.namespace or ''}/{r.metadata.name}" for r in resources)
    assert kinds == ["Namespace//bench-mesh", "Namespace//bench-plain",
                     "PeerAuthentication/bench-mesh/default", "Pod/bench-mesh/client", "Pod/bench-mesh/server",
                     "Pod/bench-plain/client", "Pod/bench-plain/server", "Service/bench-mesh/server"]


def test_configs_name_the_ports_and_files(tmp_path: Path) -> None:
    conf = mesh.nginx_conf(tmp_path / "run", "x" * mesh.PAYLOAD_BYTES)
    assert f"listen {mesh.APP_PORT};" in conf
    assert f'return 200 "{"x" * mesh.PAYLOAD_BYTES}";' in conf
    assert f"worker_processes {mesh.WORKERS};" in conf
    server = mesh.haproxy_server_cfg(tmp_path)
    assert f"bind :{mesh.TLS_PORT} ssl crt {tmp_path}/server.pem ca-file {tmp_path}/ca.pem verify required" in server
    client = mesh.haproxy_client_cfg(tmp_path, "10.1.2.3")
    assert f"bind 127.0.0.1:{mesh.LOCAL_PORT}" in client
    assert f"server server 10.1.2.3:{mesh.TLS_PORT} ssl crt {tmp_path}/client.pem" in client
    assert "verify required verifyhost server.bench" in client


def test_parse_perf_stat_and_report() -> None:
    stat = ("# started on Sat Nov 21\n\n82188,,raw_syscalls:sys_enter,6000746645,100.00,,\n"
            "9399,,context-switches,6000746645,100.00,46.99,K/sec\n1749.03,msec,task-clock,1749030000,100.00,,\n"
            "<not supported>,,cycles,0,100.00,,\n")
    assert profile.parse_perf_stat(stat) == {"raw_syscalls:sys_enter": 82188, "context-switches": 9399,
                                             "task-clock": 1749.03}
    report = "# Overhead  Shared Object\n#\n    64.93%  envoy\n    31.26%  [kernel.kallsyms]\n     0.10%  libc.so.6\n"
    assert profile.parse_perf_report(report) == [("envoy", 64.93), ("[kernel.kallsyms]", 31.26), ("libc.so.6", 0.1)]
