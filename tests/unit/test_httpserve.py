"""weir.platform.httpserve: the small asyncio HTTP server, on 127.0.0.1 with a free port."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import pytest

from weir.platform.httpserve import Answer, HttpServer


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` and read until the server closes: (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    if not data:
        raise ConnectionError("the server closed the connection without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def get(port: int, target: str, method: str = "GET") -> Awaitable[tuple[int, dict[str, str], bytes]]:
    return exchange(port, f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


calls: list[tuple[str, str]] = []


async def handler(path: str, query: str) -> Answer:
    calls.append((path, query))
    if path == "/boom":
        raise RuntimeError("the handler broke")
    if path == "/json":
        return Answer.json({"b": [1, 2], "a": "x"})
    if path == "/slow":
        await asyncio.sleep(30)
    if path == "/missing":
        return Answer(404, "not here\n")
    return Answer(200, f"path={path} query={query}\n")


def serving(test: Callable[[HttpServer], Awaitable[None]]) -> None:
    async def main() -> None:
        calls.clear()
        server = HttpServer(handler, "127.0.0.1", 0)
        host, port = await server.start()
        assert (host, port) == ("127.0.0.1", server.port)
        assert port > 0
        try:
            await test(server)
        finally:
            await server.stop()
    asyncio.run(main())


def test_get_answers_with_length_and_close() -> None:
    async def test(server: HttpServer) -> None:
        status, headers, body = await get(server.port, "/hello")
        assert status == 200
        assert body == b"path=/hello query=\n"
        assert headers["content-length"] == str(len(body))
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["connection"] == "close"
    serving(test)


def test_query_string_is_passed_apart_from_the_path() -> None:
    async def test(server: HttpServer) -> None:
        status, _, body = await get(server.port, "/debug/x?name=a&b=2")
        assert status == 200
        assert body == b"path=/debug/x query=name=a&b=2\n"
        assert calls == [("/debug/x", "name=a&b=2")]
    serving(test)


def test_head_has_the_headers_and_no_body() -> None:
    async def test(server: HttpServer) -> None:
        status, headers, body = await get(server.port, "/hello", method="HEAD")
        assert status == 200
        assert headers["content-length"] == str(len(b"path=/hello query=\n"))
        assert body == b""
    serving(test)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_are_405_without_calling_the_handler(method: str) -> None:
    async def test(server: HttpServer) -> None:
        status, _, body = await exchange(
            server.port, f"{method} /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        assert status == 405
        assert method.encode() in body
        assert calls == []
    serving(test)


def test_a_handler_that_raises_is_500_and_the_server_keeps_serving() -> None:
    async def test(server: HttpServer) -> None:
        status, _, body = await get(server.port, "/boom")
        assert status == 500
        assert b"RuntimeError: the handler broke" in body
        status, _, body = await get(server.port, "/hello")
        assert (status, body) == (200, b"path=/hello query=\n")
    serving(test)


def test_status_codes_pass_through() -> None:
    async def test(server: HttpServer) -> None:
        status, _, body = await get(server.port, "/missing")
        assert (status, body) == (404, b"not here\n")
    serving(test)


def test_answer_json() -> None:
    answer = Answer.json({"b": 1, "a": [True]}, status=503)
    assert (answer.status, answer.content_type) == (503, "application/json")
    assert json.loads(answer.body) == {"a": [True], "b": 1}
    assert answer.body.index('"a"') < answer.body.index('"b"')  # sorted: stable output for people and diffs

    async def test(server: HttpServer) -> None:
        status, headers, body = await get(server.port, "/json")
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"a": "x", "b": [1, 2]}
    serving(test)


def test_garbage_or_a_closed_connection_does_not_stop_the_server() -> None:
    async def test(server: HttpServer) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /half")
        writer.close()
        await writer.wait_closed()
        status, _, _ = await get(server.port, "/hello")
        assert status == 200
    serving(test)


def test_stop_with_a_slow_client_ends_within_the_grace() -> None:
    async def main() -> None:
        server = HttpServer(handler, "127.0.0.1", 0)
        _, port = await server.start()
        # one client that never finishes its request, one whose handler takes 30 s
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(b"GET /never-finished HTTP/1.1\r\n")
        slow = asyncio.create_task(get(port, "/slow"))
        while ("/slow", "") not in calls:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await server.stop(grace=0.2)
        assert time.monotonic() - started < 3
        assert await asyncio.wait_for(idle_reader.read(), 2) == b""  # the server closed it
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(slow, 2)  # closed without an answer
        idle_writer.close()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
        await server.stop()  # a second stop is harmless
    calls.clear()
    asyncio.run(main())


def test_start_twice_is_refused() -> None:
    async def test(server: HttpServer) -> None:
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
    serving(test)
