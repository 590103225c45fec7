"""The sidecar's DNS proxy (Istio's istio-agent DNS proxy on ``:15053``).

``codec`` parses and builds DNS messages and ``resolver`` answers from the name table the
control plane pushes and caches forwarded answers; both are pure (no sockets, time from an
injected clock). ``server`` is the asyncio driver: UDP and TCP sockets and the upstream
forwarding. This package knows nothing of how the table is computed (``weir.control``).
``query`` is a small blocking client; importing this package does not load the driver.
"""

from __future__ import annotations

from weir.agent.dns.codec import Message

__all__ = ["query"]


def query(name: str, qtype: int | str, server: tuple[str, int], *, tcp: bool = False, timeout: float = 2.0,
          udp_size: int | None = None) -> Message:
    """Ask ``server`` one question (``qtype`` as a number or a name such as ``"AAAA"``) and
    return the parsed answer. Blocking; for tests and commands, not for the event loop."""
    from weir.agent.dns.server import query as _query

    return _query(name, qtype, server, tcp=tcp, timeout=timeout, udp_size=udp_size)

