"""A minimal asyncio HTTP/1.1 server for weir's own small endpoints (debug, status, health).

One request per connection (``Connection: close``), ``GET`` and ``HEAD`` only, the answer from an
async handler ``(path, query) -> Answer``. Meant for loopback or node-local endpoints with a few
callers (``weir status``, probes, scrapers), not for application traffic.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 (a driver)
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

READ_TIMEOUT: Final = 5.0
_REASONS: Final = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
                   503: "Service Unavailable"}


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Answer:
        return cls(status, json.dumps(value, indent=2, sort_keys=True) + "\n", "application/json")


Handler = Callable[[str, str], Awaitable[Answer]]


class HttpServer:
    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        if self._server is not None:
            raise RuntimeError("the HTTP server was already started")
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.host, self.port

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is None:
            return
        self._server.close()
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            method, _, rest = head.decode("latin-1").partition(" ")
            path, _, query = rest.partition(" ")[0].partition("?")
            if method not in ("GET", "HEAD"):
                answer = Answer(405, f"method {method} not allowed\n")
            else:
                try:
                    answer = await self.handler(path, query)
                except Exception as exc:  # one bad request must not stop the server
                    log.exception("HTTP %s %s failed", method, path)
                    answer = Answer(500, f"{type(exc).__name__}: {exc}\n")
            body = answer.body.encode()
            writer.write(f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, '')}\r\n"
                         f"Content-Type: {answer.content_type}\r\nContent-Length: {len(body)}\r\n"
                         "Connection: close\r\n\r\n".encode("latin-1"))
            if method != "HEAD":
                writer.write(body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
