"""weir.cli.exampleapp: the peer identity read from Envoy's ``x-forwarded-client-cert``, the
versions of nested answers, and a real ``http`` app on loopback driven by ``load``."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from weir.cli.exampleapp import _versions, peer_identities
from weir.cli.main import main

BY = "spiffe://cluster.local/ns/demo/sa/backend"
URI = "spiffe://cluster.local/ns/demo/sa/frontend"
HASH = "Hash=8b4d1e0c9f2a"


@pytest.mark.parametrize(("xfcc", "expected"), [
    ("", {}),
    ("   ", {}),
    (f"By={BY};{HASH};URI={URI}", {"by": BY, "uri": URI}),
    # Istio's inbound sidecar: the subject is quoted (empty for workload certificates) and DNS names follow
    (f'By={BY};{HASH};Subject="";URI={URI};DNS=frontend.demo', {"by": BY, "uri": URI}),
    # several hops: the last element is the hop to this application
    (f"By=spiffe://a/ns/x/sa/gw;{HASH};URI=spiffe://a/ns/x/sa/client,By={BY};{HASH};URI={URI}",
     {"by": BY, "uri": URI}),
    (f"By=spiffe://a/ns/x/sa/gw;URI=spiffe://a/ns/x/sa/client, By={BY};URI={URI}", {"by": BY, "uri": URI}),
    # quoted values may hold ',' ';' and '=' (and escaped quotes): they do not split elements or pairs
    (f'By={BY};{HASH};Subject="CN=frontend,O=demo;x";URI={URI}', {"by": BY, "uri": URI}),
    (f'By="spiffe://a/ns/x/sa/gw";Subject="O=\\"a,b\\"";URI="spiffe://a/ns/x/sa/c",By="{BY}";URI="{URI}"',
     {"by": BY, "uri": URI}),
    (f'By={BY};Subject="CN=x,URI=spiffe://fake"', {"by": BY}),  # a URI inside a quoted subject is not the URI
    ("Hash=abc;Subject=x", {}),
    (f"uri={URI};by={BY}", {"by": BY, "uri": URI}),  # keys are case-insensitive
    (f"By={BY};URI={URI},", {"by": BY, "uri": URI}),  # a stray trailing comma
])
def test_peer_identities(xfcc: str, expected: dict[str, str]) -> None:
    assert peer_identities(xfcc) == expected


@pytest.mark.parametrize(("body", "expected"), [
    ({"service": "backend", "version": "v2"}, ["v2"]),
    ({"service": "frontend", "backend": {"status": 200, "body": {"version": "v1"}}}, ["v1"]),
    ({"version": "f1", "backend": {"body": {"version": "v1", "backend": {"body": {"version": 3}}}}},
     ["f1", "v1", "3"]),
    ({"service": "frontend", "backend": {"error": "connection refused"}}, []),
    ({"service": "frontend", "backend": {"status": 502, "body": "upstream connect error"}}, []),
    ({"backend": "not an object"}, []),
    ({"backend": None, "version": "v1"}, ["v1"]),
    ([{"version": "v1"}], []),
    (None, []),
])
def test_versions(body: Any, expected: list[str]) -> None:
    assert _versions(body) == expected


# --- a real app on loopback ------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_app() -> Iterator[int]:
    """``weir example-app http`` on a free port; yields the port it reports."""
    env = {**os.environ, "POD_NAME": "s-pod-1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "weir", "example-app", "http", "--service", "s",
                             "--version", "v9", "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    # the app logs a line per request: keep reading so that a full pipe never blocks it
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or ()],
                              name="example-app-log", daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=30)
        found = re.search(r"listening on :(\d+)$", first.strip())
        assert found, f"the app said {first!r}"
        port = int(found.group(1))
        assert port != 0
        yield port
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(5)
        proc.stdout.close()


def load(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["example-app", "load", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_load_counts_answers_and_versions(http_app: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = load(capsys, f"http://127.0.0.1:{http_app}/x?q=1", "-n", "5", "-c", "2",
                         "-H", f"x-forwarded-client-cert: By={BY};{HASH};URI={URI}")
    assert code == 0
    assert (summary["requests"], summary["ok"], summary["failed"]) == (5, 5, 0)
    assert summary["versions"] == {"v9": 5}
    assert summary["status"] == {"200": 5}
    assert summary["errors"] == {}
    assert summary["address"] == "127.0.0.1"
    sample = summary["samples"][0]
    assert (sample["service"], sample["version"], sample["pod"], sample["path"]) == ("s", "v9", "s-pod-1", "/x?q=1")
    assert sample["peer"] == {"by": BY, "uri": URI}
    assert 1 <= len(summary["samples"]) <= 3


def test_load_more_requests_than_connections(http_app: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = load(capsys, f"http://127.0.0.1:{http_app}/", "-n", "12", "-c", "3")
    assert (code, summary["ok"], summary["versions"]) == (0, 12, {"v9": 12})
    assert summary["samples"][0]["path"] == "/"


def test_the_app_answers_a_post_and_keeps_the_connection_usable(http_app: int) -> None:
    with socket.create_connection(("127.0.0.1", http_app), timeout=5) as sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: s\r\nContent-Length: 12\r\n\r\nGET /b HTTP/"
                     b"GET /c HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    bodies = [json.loads(line) for line in data.decode().splitlines() if line.startswith("{")]
    assert [b["path"] for b in bodies] == ["/a", "/c"]  # the body of /a was not read as a request


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_load_to_a_closed_port_counts_failures(capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = load(capsys, f"http://127.0.0.1:{free_port()}/", "-n", "3", "--timeout", "2")
    assert code == 1
    assert (summary["requests"], summary["ok"], summary["failed"]) == (3, 0, 3)
    assert summary["versions"] == {}
    assert sum(summary["errors"].values()) == 3
    assert all("ConnectionRefusedError" in e for e in summary["errors"])


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1:8080/x", "http:///x", "http://127.0.0.1:http/",
                                 "http://127.0.0.1:70000/", "not a url"])
def test_load_refuses_an_invalid_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["example-app", "load", url, "-n", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "expected http://HOST[:PORT]/PATH" in captured.err
