"""``weir example-app``: the small applications of ``examples/mesh`` (what Istio's samples are as images).

Roles, each a plain program that knows nothing of the mesh (standard library only):

- ``http``: answers every request with JSON saying which service, version and pod answered, the
  request's path and Host, and the peer identity the server-side sidecar forwarded
  (``x-forwarded-client-cert``); logs one line per request (mirrored requests show up there);
- ``frontend``: on each request calls a backend over HTTP and a TCP service by name, and answers
  with what both said, the addresses the names resolved to, and its own peer identity;
- ``tcp-echo``: a plain TCP line echo;
- ``load``: sends requests to a URL (keep-alive connections, optional concurrency) and prints a JSON
  summary: status codes, failures, versions answering, peers and resolved addresses.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http.client import HTTPConnection, HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from weir.cli._common import Parser

XFCC = "x-forwarded-client-cert"


def register(groups: Any) -> None:
    parser = groups.add_parser("example-app", help="the example applications `weir up` runs (http, frontend, "
                               "tcp-echo, load)", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    roles = parser.add_subparsers(dest="role", metavar="ROLE", parser_class=Parser)
    roles.required = True
    http = roles.add_parser("http", help="an HTTP service that says who answered")
    http.add_argument("--service", required=True, help="the service name to report")
    http.add_argument("--version", default="v1", help="the version to report (default v1)")
    http.add_argument("--port", type=int, default=8080)
    http.set_defaults(func=cmd_http)
    front = roles.add_parser("frontend", help="an HTTP service that calls an HTTP and a TCP backend by name")
    front.add_argument("--port", type=int, default=8080)
    front.add_argument("--backend", required=True, metavar="URL", help="e.g. http://backend:8080/")
    front.add_argument("--tcp", required=True, metavar="HOST:PORT", help="e.g. tcp-echo:9000")
    front.set_defaults(func=cmd_frontend)
    echo = roles.add_parser("tcp-echo", help="a plain TCP line echo")
    echo.add_argument("--port", type=int, default=9000)
    echo.set_defaults(func=cmd_echo)
    load = roles.add_parser("load", help="send requests and print a JSON summary")
    load.add_argument("url")
    load.add_argument("-n", "--count", type=int, default=10, help="requests in all (default 10)")
    load.add_argument("-c", "--concurrency", type=int, default=1, help="connections (default 1)")
    load.add_argument("-H", "--header", action="append", default=[], metavar="NAME:VALUE")
    load.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    load.add_argument("--interval", type=float, default=0.0, help="seconds between requests per connection")
    load.set_defaults(func=cmd_load)


def _pod() -> str:
    return os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or socket.gethostname()


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` where it is not inside double quotes (``\\`` escapes in them)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def peer_identities(xfcc: str) -> dict[str, str]:
    """``By=spiffe://...;Hash=...;URI=spiffe://...`` (the last element: this hop) -> {"by": ..., "uri": ...}.

    Envoy's format: elements separated by ``,``, ``key=value`` pairs by ``;``; a value holding
    ``,``, ``;`` or ``=`` is double-quoted (``Subject="CN=a,O=b"``), with ``\\"`` inside."""
    elements = [e for e in _split_outside_quotes(xfcc, ",") if e.strip()]
    if not elements:
        return {}
    found = {}
    for part in _split_outside_quotes(elements[-1], ";"):
        key, _, value = part.partition("=")
        if key.strip().lower() in ("by", "uri"):
            found[key.strip().lower()] = _unquote(value)
    return found


def _log(text: str) -> None:
    sys.stdout.write(f"{time.strftime('%H:%M:%S')} {text}\n")
    sys.stdout.flush()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answer: Any = None

    def do_GET(self) -> None:
        length = self.headers.get("Content-Length", "")
        if length.isdigit():  # a POST's body, read so that it is not taken for the next request
            self.rfile.read(int(length))
        xfcc = self.headers.get(XFCC, "")
        _log(f"{self.command} {self.path} host={self.headers.get('Host', '')} peer={peer_identities(xfcc)}")
        code, body = type(self).answer(self)
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        return


def _serve(port: int, answer: Any) -> int:
    handler = type("Handler", (_Handler,), {"answer": staticmethod(answer)})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    server.daemon_threads = True
    _log(f"listening on :{server.server_address[1]}")  # the bound port, also for --port 0
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def cmd_http(args: argparse.Namespace) -> int:
    def answer(req: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        return 200, {"service": args.service, "version": args.version, "pod": _pod(), "path": req.path,
                     "host": req.headers.get("Host", ""), "peer": peer_identities(req.headers.get(XFCC, ""))}
    return _serve(args.port, answer)


def _resolve(host: str) -> str:
    try:
        return str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    except OSError as exc:
        return f"unresolved: {exc}"


def _call_http(url: str, timeout: float = 5.0) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    result: dict[str, Any] = {"url": url, "address": _resolve(host)}
    try:
        conn = HTTPConnection(host, parts.port or 80, timeout=timeout)
        conn.request("GET", _target(parts))
        response = conn.getresponse()
        body = response.read()
        conn.close()
        result["status"] = response.status
        result["body"] = json.loads(body) if response.status == 200 else body.decode(errors="replace")[:300]
    except (OSError, HTTPException, ValueError) as exc:
        result["error"] = str(exc) or type(exc).__name__
    return result


def _call_tcp(target: str, line: str, timeout: float = 5.0) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    result: dict[str, Any] = {"target": target, "address": _resolve(host)}
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(line.encode() + b"\n")
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        result["reply"] = reply.decode(errors="replace").strip()
    except (OSError, ValueError) as exc:
        result["error"] = str(exc) or type(exc).__name__
    return result


def cmd_frontend(args: argparse.Namespace) -> int:
    def answer(req: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        backend = _call_http(args.backend)
        tcp = _call_tcp(args.tcp, f"hello from {_pod()}")
        ok = backend.get("status") == 200 and "reply" in tcp
        return (200 if ok else 502), {"service": "frontend", "pod": _pod(), "backend": backend, "tcp": tcp,
                                      "peer": peer_identities(req.headers.get(XFCC, ""))}
    return _serve(args.port, answer)


class _Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(f"echo from {_pod()}: ".encode() + line)


def cmd_echo(args: argparse.Namespace) -> int:
    server = socketserver.ThreadingTCPServer(("0.0.0.0", args.port), _Echo)
    server.daemon_threads = True
    _log(f"echoing on :{server.server_address[1]}")
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


def _versions(body: Any) -> list[str]:
    """The versions a JSON answer names (the frontend's nests its backend's)."""
    if not isinstance(body, dict):
        return []
    found = [str(body["version"])] if "version" in body else []
    backend = body.get("backend")
    return found + (_versions(backend.get("body")) if isinstance(backend, dict) else [])


def _target(parts: urllib.parse.SplitResult) -> str:
    """The request target of a URL: its path (``/`` when empty) and query."""
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def cmd_load(args: argparse.Namespace) -> int:
    parts = urllib.parse.urlsplit(args.url)
    try:
        valid = parts.scheme == "http" and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number or out of range
        valid = False
    if not valid:
        print(f"weir example-app load: {args.url!r}: expected http://HOST[:PORT]/PATH", file=sys.stderr)
        return 2
    headers = dict(h.split(":", 1) for h in args.header if ":" in h)
    summary: dict[str, Any] = {"url": args.url, "address": _resolve(parts.hostname), "requests": 0, "ok": 0,
                               "failed": 0, "status": collections.Counter(), "versions": collections.Counter(),
                               "errors": collections.Counter(), "samples": []}
    lock = threading.Lock()
    todo = iter(range(args.count))

    def worker() -> None:
        conn: HTTPConnection | None = None
        while True:
            with lock:
                if next(todo, None) is None:
                    break
            try:
                if conn is None:
                    conn = HTTPConnection(parts.hostname or "", parts.port or 80, timeout=args.timeout)
                conn.request("GET", _target(parts), headers=headers)
                response = conn.getresponse()
                data = response.read()
                body = json.loads(data) if response.headers.get("Content-Type") == "application/json" else None
                with lock:
                    summary["requests"] += 1
                    summary["status"][str(response.status)] += 1
                    summary["ok" if response.status == 200 else "failed"] += 1
                    summary["versions"].update(_versions(body))
                    if len(summary["samples"]) < 3 and body is not None:
                        summary["samples"].append(body)
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, HTTPException, ValueError) as exc:
                with lock:
                    summary["requests"] += 1
                    summary["failed"] += 1
                    summary["errors"][f"{type(exc).__name__}: {exc}"] += 1
                if conn is not None:
                    conn.close()
                conn = None
            if args.interval:
                time.sleep(args.interval)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(summary, sort_keys=True))
    return 0 if summary["failed"] == 0 else 1

