"""Where the proxies' time and memory go (``bench/dataplane.py --profile``).

weir's part of the request path is Envoy running weir's configuration (the agent answers DNS
and serves certificates, but no request crosses it), so the profile looks at Envoy under the
benchmark's paced load, beside HAProxy under the same load:

- every path with one connection and one request at a time: its latency with no burst to
  queue behind, to tell a proxy's own time per request from queueing;
- ``perf stat`` on the proxy processes: CPU time, system calls and context switches per request;
- ``perf record -e cpu-clock`` (a software clock: it works where hardware counters do not):
  the share of samples in the proxy's own code, the kernel and libraries, and the hottest
  kernel symbols (the Envoy wheel is stripped, so its own code is one block);
- the agent's memory: its RSS running, beside a bare interpreter's and the RSS after importing
  what it imports (``grpc``, weir's agent modules), each in a fresh interpreter.

perf is Debian's ``linux-perf``; without it only the memory part runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dataplane_load import latency, paced_argv, parse_h2load, parse_log, read_memory, serial_argv
from dataplane_mesh import Lab

EVENTS = "raw_syscalls:sys_enter,context-switches,task-clock"
IMPORTS = {"interpreter alone": "pass", "import grpc": "import grpc",
           "import weir.agent.proxy (all the agent imports)": "import weir.agent.proxy"}


def parse_perf_stat(text: str) -> dict[str, float]:
    """``perf stat -x,`` output: event name -> count (task-clock in ms)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            out[fields[2]] = float(fields[0])
        except ValueError:
            continue  # "<not supported>" / "<not counted>"
    return out


_SHARE = re.compile(r"^\s*([\d.]+)%\s+(.+?)\s*$")


def parse_perf_report(text: str) -> list[tuple[str, float]]:
    """``perf report --stdio -g none``: (key, percent) rows, largest first."""
    rows = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = _SHARE.match(line)
        if m:
            rows.append((m.group(2), float(m.group(1))))
    return rows


def _report(data: Path, *args: str) -> list[tuple[str, float]]:
    out = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none", *args],
                         capture_output=True, text=True, timeout=120, check=False)
    return parse_perf_report(out.stdout)


def _rss_after(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", f"{code}\nprint(open('/proc/self/status').read())"],
                         capture_output=True, text=True, timeout=120, check=True)
    return read_rss(out.stdout) / 1024


def read_rss(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line")


def agent_memory(lab: Lab) -> dict[str, float]:
    route = next(r for r in lab.routes() if r.key == "weir")
    agents = [p for side in lab.proxies(route).values() for p in side if p.role == "agent"]
    out = {label: _rss_after(code) for label, code in IMPORTS.items()}
    out["the running agent (mean of both sides)"] = sum(read_memory(p.pid)[0] for p in agents) / len(agents) / 1024
    return out


SERIAL_REQUESTS = 3000


def one_at_a_time(lab: Lab) -> dict[str, dict[str, float]]:
    """p50/p90/p99 (ms) of each path with a single connection, after 10% of warm-up requests."""
    out = {}
    for route in lab.routes():
        log = lab.log_path(f"serial-{route.key}.log")
        text = lab.exec(route, serial_argv(route.url, lab.payload, str(log), SERIAL_REQUESTS), timeout=300)
        summary = parse_h2load(text)
        if summary.problems():
            raise RuntimeError(f"{route.label}, one at a time: {', '.join(summary.problems())}")
        rows = sorted(parse_log(log.read_text()), key=lambda r: r.start_us)[SERIAL_REQUESTS // 10:]
        lat = latency(rows, 0)
        out[route.key] = {"p50": lat.p50, "p90": lat.p90, "p99": lat.p99, "req_per_s": summary.req_per_s}
    return out


def profile_proxies(lab: Lab, rate: float, connections: int, seconds: float, say: Any) -> dict[str, Any]:
    say(f"profile: every path, one connection, {SERIAL_REQUESTS} requests one at a time")
    result: dict[str, Any] = {"one_at_a_time_ms": one_at_a_time(lab), "agent_memory_mib": agent_memory(lab)}
    if shutil.which("perf") is None:
        result["perf"] = "perf is not installed (Debian: linux-perf)"
        return result
    scratch = Path(tempfile.mkdtemp(prefix="weir-bench-dp-perf-"))
    try:
        for route in lab.routes():
            if route.key == "direct":
                continue
            roles = ("envoy",) if route.key == "weir" else ("haproxy",)
            pids = [p.pid for side in lab.proxies(route).values() for p in side if p.role in roles]
            say(f"profile: {route.label} ({', '.join(roles)} pids {pids}), {seconds:g}s at {rate:,.0f} req/s")
            result[route.key] = _profile_one(lab, route, pids, rate, connections, seconds, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _profile_one(lab: Lab, route: Any, pids: list[int], rate: float, connections: int, seconds: float,
                 scratch: Path) -> dict[str, Any]:
    pid_list = ",".join(map(str, pids))
    stat_out, data = scratch / f"{route.key}.stat", scratch / f"{route.key}.data"
    window = f"{seconds + 1:g}"
    perfs = [subprocess.Popen(["perf", "stat", "-x,", "-e", EVENTS, "-p", pid_list, "-o", str(stat_out), "--",
                               "sleep", window], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", pid_list, "-o",
                               str(data), "--", "sleep", window], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    try:
        time.sleep(0.3)  # attached before the first request
        log = lab.log_path(f"profile-{route.key}.log")
        out = lab.exec(route, paced_argv(route.url, lab.payload, str(log), seconds, rate, connections),
                       timeout=seconds + 60)
        for p in perfs:
            p.wait(timeout=seconds + 30)
    finally:
        for p in perfs:
            if p.poll() is None:
                p.kill()
                p.wait()
    requests = parse_h2load(out).done
    counts = parse_perf_stat(stat_out.read_text())
    per_request = {
        "cpu_ms": counts.get("task-clock", float("nan")) / requests,
        "syscalls": counts.get("raw_syscalls:sys_enter", float("nan")) / requests,
        "context_switches": counts.get("context-switches", float("nan")) / requests,
    }
    return {"requests": requests, "processes": len(pids), "per_request_all_processes": per_request,
            "samples_by_dso_pct": _report(data, "--sort", "dso")[:6],
            "top_kernel_symbols_pct": _report(data, "--sort", "sym", "--dsos", "[kernel.kallsyms]")[:8]}


def print_profile(p: dict[str, Any]) -> None:
    serial = p["one_at_a_time_ms"]
    print("\nprofile: one connection, one request at a time (ms, p50 / p90 / p99, and added over direct at p50): "
          + "; ".join(f"{k} {v['p50']:.3f} / {v['p90']:.3f} / {v['p99']:.3f}"
                      + (f" (+{v['p50'] - serial['direct']['p50']:.3f})" if k != "direct" else "")
                      for k, v in serial.items()))
    print("profile: the agent's memory (RSS, MiB): " + "; ".join(f"{k} {v:.1f}"
                                                                 for k, v in p["agent_memory_mib"].items()))
    if "perf" in p:
        print(f"profile: {p['perf']}")
        return
    for key, label in (("weir", "weir's Envoys (both sides)"), ("haproxy", "the HAProxies (both sides)")):
        one = p[key]
        per = one["per_request_all_processes"]
        print(f"profile: {label}, per request: {per['cpu_ms']:.3f} ms CPU, {per['syscalls']:.1f} system calls, "
              f"{per['context_switches']:.2f} context switches")
        print("  samples by object: " + ", ".join(f"{k} {v:.0f}%" for k, v in one["samples_by_dso_pct"]))
        print("  hottest kernel symbols (% of all samples): "
              + ", ".join(f"{k.removeprefix('[k] ')} {v:.1f}" for k, v in one["top_kernel_symbols_pct"][:5]))
