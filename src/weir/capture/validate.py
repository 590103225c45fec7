"""The validation probe (Istio's ``istio-validation`` init container).

Run as the proxy uid inside the pod's network namespace, it proves that traffic capture is
in place: it listens on 127.0.0.1:15001 and 127.0.0.1:15006 (Envoy's outbound and inbound
ports), dials 127.0.0.6:15002 from 127.0.0.1 once a second, and passes when a listener
accepts that connection and ``SO_ORIGINAL_DST`` shows port 15002, which only a redirect
can produce. Nothing listens on 15002, so without rules every dial is refused. After the
timeout it explains what it saw and exits 126, the code the repair controller looks for.
IPv6 uses [::1] and [::6].
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from weir.capture.spec import DEFAULT_INBOUND_CAPTURE_PORT, DEFAULT_PROXY_PORT, PROBE_PORT
from weir.netns import original_dst

VALIDATION_ERROR_CODE = 126


@dataclass(frozen=True)
class ProbeConfig:
    proxy_port: int = DEFAULT_PROXY_PORT
    inbound_port: int = DEFAULT_INBOUND_CAPTURE_PORT
    probe_port: int = PROBE_PORT
    ipv6: bool = False
    timeout: float = 5.0
    interval: float = 1.0

    @property
    def listen_address(self) -> str:
        return "::1" if self.ipv6 else "127.0.0.1"

    @property
    def probe_address(self) -> str:
        return "::6" if self.ipv6 else "127.0.0.6"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    attempts: int
    detail: str

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else VALIDATION_ERROR_CODE


def host_is_ipv6_only() -> bool:
    """True when this namespace has no IPv4 route but a global IPv6 address (Istio's rule)."""
    try:
        with open("/proc/net/route") as f:
            v4_routes = [line for line in f.read().splitlines()[1:] if line.strip() and not line.startswith("lo")]
        with open("/proc/net/if_inet6") as f:
            v6_global = [line for line in f.read().splitlines() if line.split()[3:4] == ["00"]]
    except OSError:
        return False
    return not v4_routes and bool(v6_global)


class _Server:
    """Accepts on the proxy ports and records each connection's original destination."""

    def __init__(self, cfg: ProbeConfig) -> None:
        self.cfg = cfg
        self.seen: list[tuple[int, str, int]] = []  # (listener port, original ip, original port)
        self.passed = threading.Event()
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()  # close() wakes the server at once, not after its timeout
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        family = socket.AF_INET6 if cfg.ipv6 else socket.AF_INET
        self._listeners = []
        for port in (cfg.proxy_port, cfg.inbound_port):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((cfg.listen_address, port))
            except OSError as exc:
                sock.close()
                self.close()
                raise OSError(exc.errno, f"cannot listen on {cfg.listen_address} port {port}: {exc.strerror}") from None
            sock.listen(16)
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ, port)
            self._listeners.append(sock)
        self._thread = threading.Thread(target=self._serve, name="validation-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=1.0):
                if key.data is None:  # the wake pipe: close() was called
                    return
                listener = key.fileobj
                assert isinstance(listener, socket.socket)
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                with conn:
                    try:
                        ip, port = original_dst(conn)
                    except OSError:
                        ip, port = "?", 0
                    self.seen.append((int(key.data), ip, port))
                    conn.sendall(f"{port}\n".encode())
                    if port == self.cfg.probe_port:
                        self.passed.set()

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"x")
        if hasattr(self, "_thread"):
            self._thread.join(timeout=1)
        for sock in self._listeners:
            sock.close()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)


def _dial(cfg: ProbeConfig) -> str:
    """One probe connection; returns what happened, for the failure report."""
    family = socket.AF_INET6 if cfg.ipv6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(min(cfg.interval, 1.0))
        sock.bind((cfg.listen_address, 0))
        try:
            sock.connect((cfg.probe_address, cfg.probe_port))
            reply = sock.recv(16).decode(errors="replace").strip()
        except ConnectionRefusedError:
            return "connection refused (nothing redirected it)"
        except TimeoutError:
            return "timed out"
        except OSError as exc:
            return exc.strerror or str(exc)
    return f"connected, listener saw original port {reply or '?'}"


def run_probe(cfg: ProbeConfig, log: Callable[[str], None] = lambda _: None,
              clock: Callable[[], float] = time.monotonic) -> ProbeResult:
    """Probe until the redirect is proven or ``cfg.timeout`` passes."""
    try:
        server = _Server(cfg)
    except OSError as exc:
        return ProbeResult(False, 0, str(exc))
    deadline = clock() + cfg.timeout
    attempts = 0
    last = "no attempt made"
    try:
        while True:
            attempts += 1
            last = _dial(cfg)
            if server.passed.wait(timeout=0.2):
                return ProbeResult(True, attempts, f"{cfg.probe_address}:{cfg.probe_port} was redirected "
                                                   f"(attempt {attempts})")
            log(f"attempt {attempts}: {last}")
            if clock() >= deadline:
                break
            time.sleep(max(0.0, min(cfg.interval - 0.2, deadline - clock())))
    finally:
        server.close()
    seen = ", ".join(f"port {p} saw original {ip}:{op}" for p, ip, op in server.seen) or "no connection reached them"
    return ProbeResult(False, attempts, f"last attempt: {last}; listeners: {seen}")


def failure_message(cfg: ProbeConfig, result: ProbeResult, uid: int) -> str:
    return (
        "iptables validation failed; workload is not ready for the mesh.\n"
        f"  A connection from {cfg.listen_address} to {cfg.probe_address}:{cfg.probe_port}, made as uid {uid},\n"
        f"  should have been redirected to {cfg.listen_address}:{cfg.inbound_port} (or :{cfg.proxy_port}) by the\n"
        f"  pod's capture rules; after {cfg.timeout:g}s and {result.attempts} attempt(s) it was not.\n"
        f"  Detail: {result.detail}\n"
        "  Most likely the pod started before weir's CNI plugin was in the chain (node start-up race), or\n"
        "  the rules were removed. The node agent's repair controller fixes such pods; `weir capture check`\n"
        "  shows what is in place."
    )


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``:``gid`` with no supplementary groups (only works as root)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
