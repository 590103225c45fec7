"""The processes of the control-plane benchmark: ``weir control run``, the simulated-proxy
clients, and a sampler of their CPU and memory from ``/proc``.

:class:`ControlProcess` starts ``python -m weir control run`` on free loopback ports with its own
store and log, waits until ``/ready`` answers, and stops it (SIGTERM, then SIGKILL after a
grace period) by the PID it started. :class:`Clients` starts the simulated proxies
(``control_scale_client.py``, a fixed number of streams per process), waits for every channel
to connect, releases them together (``go``) and collects their events on reader threads.
:class:`Sampler` reads ``/proc/<pid>/stat`` (user + system CPU seconds, every thread) and
``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) every ``interval`` seconds on a thread.
Nothing here touches a process this benchmark did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
CLIENT = HERE / "control_scale_client.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 120.0
STOP_GRACE = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15 of stat)


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in bytes: resident now, and the peak so far."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found.get("VmRSS", 0), found.get("VmHWM", 0)


# ---- the control plane ------------------------------------------------------------------------


@dataclass
class ControlProcess:
    store: Path
    log_path: Path
    ads: str = ""
    debug: str = ""
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready_after: float = 0.0
    """Seconds from the process start to ``/ready`` answering 200 (the first snapshot is built)."""

    def start(self) -> None:
        self.ads, self.debug = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "weir", "control", "run", "--store", str(self.store),
                "--ads-address", self.ads, "--debug-address", self.debug, "--log-format", "json"]
        with open(self.log_path, "wb") as log:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # Ctrl-C reaches us; we stop it in order
        deadline = self.started + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weir control run exited ({self.proc.returncode}):\n{self.log_tail()}")
            with (contextlib.suppress(OSError, urllib.error.URLError),
                  urllib.request.urlopen(f"http://{self.debug}/ready", timeout=2) as answer):
                if answer.status == 200:
                    self.ready_after = time.monotonic() - self.started
                    return
            time.sleep(0.05)
        raise RuntimeError(f"weir control run not ready after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# ---- the simulated proxies --------------------------------------------------------------------


@dataclass(frozen=True)
class Synced:
    proxy: int
    version: int
    first: float
    """Monotonic time the first response of ``version`` reached the proxy."""
    synced: float
    """Monotonic time the proxy had ACKed ``version`` of every type it subscribed to."""


@dataclass
class Clients:
    target: str
    services: int
    proxies: int
    per_process: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self, timeout: float) -> None:
        """Start the client processes and wait until each has every channel connected."""
        for first in range(0, self.proxies, self.per_process):
            count = min(self.per_process, self.proxies - first)
            argv = [sys.executable, str(CLIENT), self.target, str(self.services), str(self.proxies), str(first),
                    str(count)]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            self.procs.append(proc)
            assert proc.stdout is not None
            thread = threading.Thread(target=self._read, args=(proc.stdout,), name=f"clients-{first}", daemon=True)
            thread.start()
            self._threads.append(thread)
        ready = 0
        deadline = time.monotonic() + timeout
        while ready < len(self.procs):
            event = self.next_event(deadline - time.monotonic())
            if "ready" not in event:
                raise RuntimeError(f"a client process said {event!r} before it was ready")
            ready += 1

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.events.put(json.loads(line))
        self.events.put({"error": "a client process ended its output", "p": -1})

    def next_event(self, timeout: float) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            raise TimeoutError from None
        if "error" in event:
            raise RuntimeError(f"simulated proxy {event.get('p')}: {event['error']}")
        return event

    def go(self) -> float:
        """Release every client; returns the monotonic time just before the first ``go`` is written."""
        t0 = time.monotonic()
        for proc in self.procs:
            self._send(proc, "go")
        return t0

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    @property
    def pids(self) -> Sequence[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            with contextlib.suppress(OSError):
                self._send(proc, "stop")
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in procs:
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# ---- sampling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    t: float
    cpu: float
    """The control plane's CPU seconds so far."""
    rss: int
    hwm: int
    clients_cpu: float
    """CPU seconds of the client processes so far (only those alive at the sample)."""


class Sampler:
    """Samples the control plane (and the clients' CPU) every ``interval`` s on a thread."""

    def __init__(self, pid: int, clients: Clients | None, interval: float = 0.1) -> None:
        self.pid, self.clients, self.interval = pid, clients, interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def sample(self) -> Sample:
        rss, hwm = memory(self.pid)
        clients = 0.0
        for pid in self.clients.pids if self.clients else ():
            with contextlib.suppress(OSError):
                clients += cpu_seconds(pid)
        s = Sample(time.monotonic(), cpu_seconds(self.pid), rss, hwm, clients)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.sample()

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        self.sample()
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()

    def between(self, start: float, end: float) -> tuple[float, float]:
        """(CPU seconds, peak cores over 1 s windows) of the control plane between two times."""
        inside = [s for s in self.samples if start - self.interval <= s.t <= end + self.interval]
        if len(inside) < 2:
            return 0.0, 0.0
        peak = 0.0
        j = 0
        for i, s in enumerate(inside):
            while inside[j].t < s.t - 1.0:
                j += 1
            if s.t - inside[j].t >= 0.5 and i > j:
                peak = max(peak, (s.cpu - inside[j].cpu) / (s.t - inside[j].t))
        return inside[-1].cpu - inside[0].cpu, peak
