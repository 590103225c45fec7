"""Plumbing for the netns tier: servers that record what reached them, clients run as a
chosen uid inside a host, and normalised views of what the kernel holds.

Servers are sockets created inside a host's namespace (``weir.netns.socket_in``) and served
by a thread of the test process; clients are short Python snippets run inside a host with
``lab.python`` (optionally as another uid, via setpriv). Every wait is bounded.
"""

from __future__ import annotations

import ctypes
import json
import queue
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from weir import netns
from weir.capture.apply import Backend, Executor
from weir.capture.config import spec_from_config
from weir.capture.spec import CaptureSpec
from weir.netns import lab
from weir.netns.lab import Host

BACKENDS = [Backend.IPTABLES_NFT, Backend.IPTABLES_LEGACY, Backend.NFTABLES]
IPTABLES_BACKENDS = [Backend.IPTABLES_NFT, Backend.IPTABLES_LEGACY]
FAMILIES = [4, 6]

IP_TRANSPARENT = 19  # <linux/in.h>
IPV6_TRANSPARENT = 75  # <linux/in6.h>

WAIT = 5.0  # seconds any single network event may take

_libc = ctypes.CDLL(None, use_errno=True)


def backend_id(backend: Backend) -> str:
    return backend.value


def spec(**keys: str) -> CaptureSpec:
    """A spec from istio-iptables keys (absent keys are off)."""
    return spec_from_config(keys)


def executor(tmp_path: Path, **kwargs: Any) -> Executor:
    return Executor(state_dir=str(tmp_path / "state"), **kwargs)


def addr(host: Host, family: int) -> str:
    return host.ipv4 if family == 4 else host.ipv6


# ---- servers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """One connection a server accepted (or datagram it received)."""

    peer: tuple[str, int]
    local: tuple[str, int]  # getsockname() of the accepted socket
    original: tuple[str, int] | None  # SO_ORIGINAL_DST, None when the kernel has none
    payload: bytes = b""


def _socket(host: Host, family: int, kind: int, owner: int | None) -> socket.socket:
    """A socket in ``host``'s namespace; with ``owner``, owned by that uid and gid as netfilter's
    owner match sees it (the file credentials of the creating thread: its fsuid and fsgid)."""

    def make() -> socket.socket:
        if owner is not None:  # per-thread, and this thread is discarded afterwards
            _libc.setfsgid(owner)
            _libc.setfsuid(owner)
        return socket.socket(family, kind)

    return netns.run_in(host.ns, make)


class Server:
    """A TCP or UDP server inside ``host`` that answers ``marker`` and records every peer.

    ``owner`` makes the socket belong to that uid, as the proxy's sockets belong to 1337;
    ``loopback`` binds to 127.0.0.1 or ::1 instead of every address.
    """

    def __init__(self, host: Host, port: int, marker: str, *, family: int = 4, udp: bool = False,
                 transparent: bool = False, owner: int | None = None, loopback: bool = False) -> None:
        self.marker = marker
        self.port = port
        self.udp = udp
        fam = socket.AF_INET if family == 4 else socket.AF_INET6
        self.sock = _socket(host, fam, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM, owner)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == 6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            if family == 4:
                self.sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
            else:
                self.sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        if loopback:
            self.sock.bind(("127.0.0.1" if family == 4 else "::1", port))
        else:
            self.sock.bind(("0.0.0.0" if family == 4 else "::", port))
        if not udp:
            self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.seen: queue.Queue[Accepted] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"server:{host.name}:{port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self.udp:
                    data, peer = self.sock.recvfrom(2048)
                    self.seen.put(Accepted(peer[:2], self.sock.getsockname()[:2], None, data))
                    self.sock.sendto(self.marker.encode(), peer)  # recorded before the peer hears back
                    continue
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            with conn:
                try:
                    original: tuple[str, int] | None = netns.original_dst(conn)
                except OSError:
                    original = None
                self.seen.put(Accepted(peer[:2], conn.getsockname()[:2], original))
                conn.sendall(self.marker.encode())  # recorded before the peer hears back

    def expect(self, timeout: float = WAIT) -> Accepted:
        try:
            return self.seen.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"nothing reached the {'UDP' if self.udp else 'TCP'} server on :{self.port} "
                        f"({self.marker}) within {timeout}s")

    def assert_idle(self) -> None:
        assert self.seen.empty(), f"{self.marker} on :{self.port} was reached: {self.seen.get_nowait()}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WAIT)
        self.sock.close()


@contextmanager
def serving(host: Host, port: int, marker: str, **kwargs: Any) -> Iterator[Server]:
    server = Server(host, port, marker, **kwargs)
    try:
        yield server
    finally:
        server.close()


# ---- clients --------------------------------------------------------------------------------

_TCP_CLIENT = r"""
import json, socket, sys
ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = {}
try:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.settimeout(timeout)
        s.connect((ip, port))
        out["local"] = list(s.getsockname()[:2])
        data = b""
        while True:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        out["reply"] = data.decode()
except OSError as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""

_UDP_CLIENT = r"""
import json, socket, sys
ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = {}
try:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"query-for-weir", (ip, port))
        data, peer = s.recvfrom(2048)
        out["reply"], out["peer"] = data.decode(), list(peer[:2])
except OSError as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _client(code: str, host: Host, ip: str, port: int, user: int | None, timeout: float) -> dict[str, Any]:
    out = lab.python(host, code, user=user, timeout=timeout + 10, args=(ip, str(port), str(timeout)))
    assert out.returncode == 0, f"client in {host.name} failed: {out.stderr}"
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def connect(host: Host, ip: str, port: int, *, user: int | None = None, timeout: float = 3.0) -> dict[str, Any]:
    """Connect from ``host`` (as ``user``) to ip:port; returns {"reply": ...} or {"error": ...}."""
    return _client(_TCP_CLIENT, host, ip, port, user, timeout)


def udp_query(host: Host, ip: str, port: int, *, user: int | None = None, timeout: float = 3.0) -> dict[str, Any]:
    return _client(_UDP_CLIENT, host, ip, port, user, timeout)


def reply(result: Mapping[str, Any]) -> str:
    assert "reply" in result, f"the client got no reply: {result.get('error')}"
    return str(result["reply"])


# ---- what the kernel holds, normalised ------------------------------------------------------

_COUNTERS = re.compile(r"\[\d+:\d+\]")
_NFT_COUNTER = re.compile(r"counter packets \d+ bytes \d+")


def iptables_save(host: Host, backend: Backend, family: int) -> str:
    """``iptables-save`` text without comments and with counters zeroed."""
    base = "iptables" if family == 4 else "ip6tables"
    kind = "legacy" if backend is Backend.IPTABLES_LEGACY else "nft"
    text = host.run(f"{base}-{kind}-save").stdout
    return "".join(_COUNTERS.sub("[0:0]", line) + "\n" for line in text.splitlines() if not line.startswith("#"))


def without_empty_tables(save: str) -> str:
    """Drop tables that hold only built-in chains with policy ACCEPT and no rules.

    Legacy iptables instantiates a table in a namespace on first use and never lets it go
    again, so an empty one is what "nothing there" looks like for that back-end.
    """
    out: list[str] = []
    block: list[str] = []
    for line in save.splitlines():
        block.append(line)
        if line == "COMMIT":
            empty = all(re.fullmatch(r":[A-Z]+ ACCEPT \[0:0\]", x) for x in block[1:-1])
            if not empty:
                out += block
            block = []
    out += block
    return "".join(line + "\n" for line in out)


def nft_ruleset(host: Host) -> str:
    text = host.run("nft", "list", "ruleset").stdout
    return _NFT_COUNTER.sub("counter", text)


def routing(host: Host) -> str:
    """Policy rules, every routing table and lo's addresses, for before/after comparisons."""
    parts = [host.run("ip", fam, *args).stdout for fam in ("-4", "-6")
             for args in (("rule", "show"), ("route", "show", "table", "all"))]
    parts.append(host.run("ip", "-o", "addr", "show", "dev", "lo").stdout)
    return "".join(parts)


def netfilter(host: Host) -> dict[str, str]:
    """Everything netfilter holds in ``host``, by tool."""
    return {
        "nft": nft_ruleset(host),
        **{f"{kind}-{fam}": iptables_save(host, backend, fam)
           for kind, backend in (("nft", Backend.IPTABLES_NFT), ("legacy", Backend.IPTABLES_LEGACY))
           for fam in FAMILIES},
    }


def snapshot(host: Host) -> dict[str, str]:
    return {**netfilter(host), "routing": routing(host)}
