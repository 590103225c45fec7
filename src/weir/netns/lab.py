"""A lab of hosts: network namespaces on a bridge, for the demo and the tests.

The bridge lives in a namespace of its own, so nothing is added to the host's namespace.
Names are unique (``<prefix><pid><n>``) and everything is removed on exit, even on error.
Addresses are 10.213.N.0/24 and fd00:213:N::/64, inside these namespaces only.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from weir.netns import NetNS

_counter = itertools.count()


def sh(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, input=input, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def in_ns(name: str, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", name, *argv, check=check, input=input)


@dataclass
class Host:
    name: str
    ipv4: str
    ipv6: str

    @property
    def ns(self) -> NetNS:
        return NetNS(f"/var/run/netns/{self.name}")

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def run(self, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return in_ns(self.name, *argv, check=check, input=input)


@dataclass
class Topology:
    switch: str
    hosts: list[Host] = field(default_factory=list)


@contextmanager
def topology(count: int = 2, *, ipv6: bool = True, prefix: str = "wt") -> Iterator[Topology]:
    """``count`` hosts on one bridge: 10.213.N.0/24 and fd00:213:N::/64 (N unique per test)."""
    n = next(_counter)
    tag = f"{prefix}{os.getpid() % 100000}{n}"
    subnet = (os.getpid() + n) % 250 + 1
    topo = Topology(switch=f"{tag}sw")
    names: list[str] = []
    try:
        sh("ip", "netns", "add", topo.switch)
        names.append(topo.switch)
        in_ns(topo.switch, "ip", "link", "set", "lo", "up")
        in_ns(topo.switch, "ip", "link", "add", "br0", "type", "bridge")
        in_ns(topo.switch, "ip", "link", "set", "br0", "up")
        for i in range(count):
            host = Host(f"{tag}h{i}", f"10.213.{subnet}.{i + 10}", f"fd00:213:{subnet}::{i + 10}")
            sh("ip", "netns", "add", host.name)
            names.append(host.name)
            in_ns(host.name, "ip", "link", "set", "lo", "up")
            sh("ip", "-n", host.name, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
               "netns", topo.switch)
            in_ns(topo.switch, "ip", "link", "set", f"p{i}", "master", "br0", "up")
            host.run("ip", "addr", "add", f"{host.ipv4}/24", "dev", "eth0")
            if ipv6:
                host.run("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0")
                host.run("ip", "-6", "addr", "add", f"{host.ipv6}/64", "dev", "eth0", "nodad")
            host.run("ip", "link", "set", "eth0", "up")
            topo.hosts.append(host)
        yield topo
    finally:
        for name in reversed(names):
            sh("ip", "netns", "del", name, check=False)


def python(host: Host, code: str, *, user: int | None = None, timeout: float = 20,
           args: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet inside ``host`` (optionally as ``user``) with this interpreter."""
    import sys

    argv = ["ip", "netns", "exec", host.name]
    if user is not None:
        argv += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    argv += [sys.executable, "-c", code, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
