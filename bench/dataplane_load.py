"""The data-plane benchmark's load and its accounting: h2load's command lines and output,
per-request latency from h2load's log, and the CPU time and memory of proxy processes read
from /proc while a run goes on.

The parsers are pure (text in, values out) so they are tested without a mesh; only
``read_usage`` and ``Sampler`` read /proc.

h2load (Debian ``nghttp2-client``) paces HTTP/1.1: ``--rps N`` gives each of the ``-c``
connections its own timer of N requests per second, one request in flight per connection,
so 16 connections at 62.5 req/s make the 1,000 req/s of Istio's harness (fortio ``-qps 1000
-c 16``). The connections' timers start together, so every 16 ms a burst of 16 requests leaves
at once: the proxies see bursts, not an even stream. ``--log-file`` writes one line per request:
start time (µs since the epoch), status, µs until the end of the response. Latency is measured
from when a request is sent (as fortio measures it), not from when it was due.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from report import percentile

H2LOAD = "h2load"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- h2load ------------------------------------------------------------------------------------


def paced_argv(url: str, payload: str, log: str, seconds: float, rate: float, connections: int) -> list[str]:
    """HTTP/1.1 POSTs of ``payload`` at ``rate`` req/s in all, spread over ``connections``, for
    ``seconds``, one log line per request."""
    if rate <= 0 or connections <= 0 or seconds <= 0:
        raise ValueError(f"rate {rate}, connections {connections} and seconds {seconds} must be positive")
    return [H2LOAD, "--h1", "-c", str(connections), "-t", "1", "--rps", f"{rate / connections:g}",
            "-D", f"{seconds:g}", "-d", payload, "--log-file", log, url]


def saturating_argv(url: str, payload: str, seconds: float, connections: int, threads: int) -> list[str]:
    """The same requests with no pacing: as many as the path takes (no log, it would cost)."""
    if connections <= 0 or seconds <= 0 or threads <= 0:
        raise ValueError(f"connections {connections}, threads {threads} and seconds {seconds} must be positive")
    return [H2LOAD, "--h1", "-c", str(connections), "-t", str(min(threads, connections)), "-D", f"{seconds:g}",
            "-d", payload, url]


def serial_argv(url: str, payload: str, log: str, requests: int) -> list[str]:
    """One connection, one request at a time, as fast as answers come: a path's latency with no
    burst to queue behind."""
    if requests <= 0:
        raise ValueError(f"requests {requests} must be positive")
    return [H2LOAD, "--h1", "-c", "1", "-t", "1", "-n", str(requests), "-d", payload, "--log-file", log, url]


@dataclass(frozen=True)
class H2loadSummary:
    """What h2load prints at the end of a run."""

    seconds: float
    req_per_s: float
    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status: Mapping[str, int]  # "2xx" .. "5xx"
    data_bytes: int

    def problems(self) -> list[str]:
        """Why the run cannot be trusted: failed, errored or timed-out requests, non-2xx answers."""
        found = [f"{n} {what}" for what, n in (("failed", self.failed), ("errored", self.errored),
                                                ("timed out", self.timeout)) if n]
        found += [f"{n} {code} responses" for code, n in self.status.items() if code != "2xx" and n]
        if self.done == 0:
            found.append("no request completed")
        return found


_FINISHED = re.compile(r"^finished in ([\d.]+)(ms|s), ([\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout", re.MULTILINE)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_TRAFFIC = re.compile(r"^traffic: .*? ([\d.]+\w*) \((\d+)\) data", re.MULTILINE)


def parse_h2load(text: str) -> H2loadSummary:
    """h2load's summary; ValueError naming the line that is missing (h2load failed early)."""
    found = {}
    for name, pattern in (("finished", _FINISHED), ("requests", _REQUESTS), ("status codes", _STATUS),
                          ("traffic", _TRAFFIC)):
        m = pattern.search(text)
        if m is None:
            tail = "\n".join(text.strip().splitlines()[-8:])
            raise ValueError(f"h2load printed no {name!r} line; its output ends with:\n{tail}")
        found[name] = m
    fin, req, st, tr = found["finished"], found["requests"], found["status codes"], found["traffic"]
    seconds = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
    counts = [int(x) for x in req.groups()]
    return H2loadSummary(seconds=seconds, req_per_s=float(fin.group(3)), total=counts[0], started=counts[1],
                         done=counts[2], succeeded=counts[3], failed=counts[4], errored=counts[5],
                         timeout=counts[6], status=dict(zip(("2xx", "3xx", "4xx", "5xx"),
                                                            (int(x) for x in st.groups()), strict=True)),
                         data_bytes=int(tr.group(2)))


@dataclass(frozen=True)
class Request:
    start_us: int
    status: int
    latency_us: int


def parse_log(text: str) -> list[Request]:
    """h2load's ``--log-file``: start (µs since the epoch), status (-1: failed), µs to the end."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"h2load log line {n}: expected 3 tab-separated fields, got {line!r}")
        try:
            rows.append(Request(int(parts[0]), int(parts[1]), int(parts[2])))
        except ValueError:
            raise ValueError(f"h2load log line {n}: not numbers: {line!r}") from None
    return rows


@dataclass(frozen=True)
class Latency:
    """Milliseconds over the requests after the warm-up; ``rate`` is what was achieved then."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    max: float
    rate: float
    dropped_warmup: int
    not_2xx: int

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("n", "p50", "p90", "p99", "mean", "max", "rate", "dropped_warmup",
                                              "not_2xx")}


def after_warmup(rows: Sequence[Request], warmup_s: float) -> list[Request]:
    """The requests started ``warmup_s`` or later after the first one (the first requests also
    pay for opening the connections)."""
    if not rows:
        raise ValueError("no requests logged")
    first = min(r.start_us for r in rows)
    return [r for r in rows if r.start_us - first >= warmup_s * 1e6]


def latency(rows: Sequence[Request], warmup_s: float) -> Latency:
    """Percentiles of the 2xx requests after the warm-up; ValueError when none is left."""
    kept = after_warmup(rows, warmup_s)
    ok = [r.latency_us / 1000 for r in kept if 200 <= r.status < 300]
    if not ok:
        raise ValueError(f"no 2xx request after the {warmup_s:g}s warm-up ({len(rows)} logged)")
    span = (max(r.start_us for r in kept) - min(r.start_us for r in kept)) / 1e6
    return Latency(n=len(ok), p50=percentile(ok, 50), p90=percentile(ok, 90), p99=percentile(ok, 99),
                   mean=sum(ok) / len(ok), max=max(ok), rate=(len(kept) - 1) / span if span > 0 else math.nan,
                   dropped_warmup=len(rows) - len(kept), not_2xx=len(kept) - len(ok))


# ---- /proc -------------------------------------------------------------------------------------


def parse_stat(text: str) -> tuple[float, float]:
    """(user, system) CPU seconds of all the process's threads, from ``/proc/PID/stat``."""
    fields = text.rsplit(")", 1)[1].split()  # the command may hold spaces and parentheses
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # utime, stime (fields 14, 15)


def parse_status(text: str) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from ``/proc/PID/status``."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    if len(values) != 2:
        raise ValueError("no VmRSS/VmHWM (a kernel thread, or a zombie)")
    return values["VmRSS"], values["VmHWM"]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def read_cpu(pid: int) -> tuple[float, float]:
    return parse_stat(_read(f"/proc/{pid}/stat"))


def read_memory(pid: int) -> tuple[int, int]:
    return parse_status(_read(f"/proc/{pid}/status"))


@dataclass(frozen=True)
class Proc:
    """A process to account for: ``role`` is what it is (``envoy``, ``agent``, ``haproxy``)."""

    pid: int
    role: str


@dataclass
class Usage:
    """One process over one run."""

    role: str
    user_s: float
    sys_s: float
    rss_peak_kib: int
    hwm_kib: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


@dataclass
class GroupUsage:
    """A proxy (one side: Envoy + agent, or one HAProxy) over one run."""

    processes: list[Usage]
    rss_peak_kib: int  # the largest sum of the processes' RSS seen at one sample

    @property
    def cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.processes)

    def by_role(self) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        for p in self.processes:
            have = out.get(p.role)
            out[p.role] = p if have is None else Usage(p.role, have.user_s + p.user_s, have.sys_s + p.sys_s,
                                                       have.rss_peak_kib + p.rss_peak_kib, have.hwm_kib + p.hwm_kib)
        return out


@dataclass
class Sampler:
    """CPU time of ``groups`` between ``start`` and ``stop``; RSS sampled every ``interval`` s in
    between on a thread. A process that goes away during the run is an error: the run would
    not say what the proxy cost."""

    groups: Mapping[str, Sequence[Proc]]
    interval: float = 0.2
    _cpu0: dict[int, tuple[float, float]] = field(default_factory=dict)
    _peak: dict[int, int] = field(default_factory=dict)
    _group_peak: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: str = ""

    def _pids(self) -> list[int]:
        return [p.pid for procs in self.groups.values() for p in procs]

    def _tick(self) -> None:
        for name, procs in self.groups.items():
            total = 0
            for p in procs:
                try:
                    rss, _ = read_memory(p.pid)
                except (OSError, ValueError):
                    self._error = self._error or f"{name}: {p.role} (pid {p.pid}) went away during the run"
                    continue
                self._peak[p.pid] = max(self._peak.get(p.pid, 0), rss)
                total += rss
            self._group_peak[name] = max(self._group_peak.get(name, 0), total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def start(self) -> None:
        self._cpu0 = {pid: read_cpu(pid) for pid in self._pids()}
        self._tick()
        self._thread = threading.Thread(target=self._loop, name="dataplane-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, GroupUsage]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._tick()
        if self._error:
            raise RuntimeError(self._error)
        out = {}
        for name, procs in self.groups.items():
            used = []
            for p in procs:
                (u0, s0), (u1, s1) = self._cpu0[p.pid], read_cpu(p.pid)
                used.append(Usage(p.role, u1 - u0, s1 - s0, self._peak.get(p.pid, 0), read_memory(p.pid)[1]))
            out[name] = GroupUsage(used, self._group_peak.get(name, 0))
        return out
