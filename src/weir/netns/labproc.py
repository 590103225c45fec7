"""Small processes for the lab: a stand-in sidecar relay and a reply server. Standard library
only, so it runs as any uid under ``/usr/bin/python3`` from a copied file.

  relay LOG_PREFIX   listen on :15001 (outbound) and :15006 (inbound); for each connection
                     print its original destination (SO_ORIGINAL_DST) and relay to it, as a
                     sidecar would. Run it as the proxy uid so its own traffic is not captured.
  reply PORT TEXT    answer every connection on PORT with TEXT and close.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
import threading
from collections.abc import Callable


def _original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, 80, 16)
    return str(ipaddress.IPv4Address(raw[4:8])), struct.unpack_from("!H", raw, 2)[0]


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _relay_one(conn: socket.socket, direction: str) -> None:
    with conn:
        ip, port = _original_dst(conn)
        print(f"{direction}: {conn.getpeername()[0]} -> original destination {ip}:{port}", flush=True)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if direction == "inbound":
            upstream.bind(("127.0.0.6", 0))  # the source Envoy uses for inbound passthrough
        with upstream:
            upstream.settimeout(5)
            upstream.connect((ip, port))
            upstream.settimeout(None)
            back = threading.Thread(target=_pump, args=(upstream, conn), daemon=True)
            back.start()
            _pump(conn, upstream)
            back.join(timeout=5)


def _serve(port: int, handle: Callable[[socket.socket], None]) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(16)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def main(argv: list[str]) -> int:
    if argv[:1] == ["relay"]:
        for port, direction in ((15001, "outbound"), (15006, "inbound")):
            threading.Thread(target=_serve, args=(port, lambda c, d=direction: _relay_one(c, d)),
                             daemon=True).start()
        print("ready", flush=True)
        threading.Event().wait()
    if argv[:1] == ["reply"] and len(argv) == 3:
        text = argv[2].encode() + b"\n"

        def answer(conn: socket.socket) -> None:
            with conn:
                conn.sendall(text)

        print("ready", flush=True)
        _serve(int(argv[1]), answer)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
