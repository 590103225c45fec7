"""Network namespaces: the one module that calls setns(2) and unshare(2).

``setns`` changes only the calling thread, so every entry into a namespace happens on a fresh
thread made for it and discarded afterwards: the caller's thread (and any event loop) never
moves. Processes started from that thread (``run``) and sockets it creates (``socket_in``)
belong to the target namespace.

This module must not know about iptables, pods or CNI.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SO_ORIGINAL_DST = 80  # netfilter: getsockopt(SOL_IP, SO_ORIGINAL_DST)
IP6T_SO_ORIGINAL_DST = 80  # netfilter: getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(OSError):
    """A namespace could not be opened or entered."""


@dataclass(frozen=True)
class NetNS:
    """A network namespace named by a path (``/var/run/netns/x``, ``/proc/PID/ns/net``)."""

    path: str

    def identity(self) -> tuple[int, int]:
        """(st_dev, st_ino): equal for two paths that name the same namespace."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise NetnsError(exc.errno, f"network namespace {self.path}: {exc.strerror}") from None
        return st.st_dev, st.st_ino

    def exists(self) -> bool:
        try:
            self.identity()
        except NetnsError:
            return False
        return True

    def is_host(self) -> bool:
        """Whether this is the namespace of this process or of PID 1 (the host's)."""
        me = self.identity()
        for other in ("/proc/self/ns/net", "/proc/1/ns/net", f"/proc/self/task/{threading.get_native_id()}/ns/net"):
            try:
                st = os.stat(other)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == me:
                return True
        return False


def _on_fresh_thread(enter: Callable[[], None], fn: Callable[[], T], name: str) -> T:
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            enter()
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread below
            error.append(exc)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _setns(path: str) -> Callable[[], None]:
    def enter() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetnsError(exc.errno, f"network namespace {path}: {exc.strerror}") from None
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NetnsError(err, f"setns({path}): {os.strerror(err)}")
        finally:
            os.close(fd)

    return enter


def _unshare() -> None:
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def run_in(ns: NetNS, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a new thread inside ``ns`` and return its result (or raise its error)."""
    return _on_fresh_thread(_setns(ns.path), fn, f"netns:{ns.path}")


def run_in_scratch(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a brand-new, empty network namespace that vanishes afterwards."""
    return _on_fresh_thread(_unshare, fn, "netns:scratch")


def run(argv: Sequence[str], ns: NetNS | None = None, *, input: str | None = None,
        env: Mapping[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a command inside ``ns`` (or here, for ``None``) and capture its output."""

    def go() -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False,
                              env=dict(env) if env is not None else None, timeout=timeout)

    return go() if ns is None else run_in(ns, go)


def socket_in(ns: NetNS, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in ``ns`` (usable from any thread)."""
    return run_in(ns, lambda: socket.socket(family, kind))


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The destination a connection had before netfilter redirected it (SO_ORIGINAL_DST)."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return str(ipaddress.IPv4Address(raw[4:8])), port


def addresses(ns: NetNS) -> list[str]:
    """The namespace's addresses (``ip -j addr``), global ones first, as ``addr/prefix``."""
    import json

    out = run(["ip", "-j", "addr", "show"], ns)
    if out.returncode != 0:
        raise NetnsError(0, f"ip addr in {ns.path} failed: {out.stderr.strip()}")
    found = []
    for link in json.loads(out.stdout or "[]"):
        for info in link.get("addr_info", []):
            if info.get("local"):
                found.append((info.get("scope") != "global", f"{info['local']}/{info.get('prefixlen', '')}"))
    return [addr for _, addr in sorted(found, key=lambda x: x[0])]


def enter_this_process(ns: NetNS) -> None:
    """Move the calling thread into ``ns`` for good. Only for a process that exists to work in
    one namespace (the runtime's per-pod shim) and calls it on its main thread before starting
    any other thread; everywhere else use ``run_in``."""
    if threading.current_thread() is not threading.main_thread() or threading.active_count() > 1:
        raise NetnsError(0, "enter_this_process must be called from the only thread of a dedicated process")
    _setns(ns.path)()
