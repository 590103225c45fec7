"""The plugin-event server: HTTP/1.1 over the UNIX socket the weir-cni plugin calls.

A small asyncio server around the synchronous :class:`CaptureService`; every verb runs on a
worker thread (the executor enters namespaces and runs commands), so the event loop never
blocks. Plugin logs posted to ``/v1/log`` are re-emitted under the ``weir.cni-plugin`` logger.
The wire format is in ``weir.cni.events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from weir.cni.events import AgentError, Attachment
from weir.nodeagent.service import CaptureService

log = logging.getLogger("weir.nodeagent")
plugin_log = logging.getLogger("weir.cni-plugin")

MAX_BODY = 1 << 20
_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR}

Response = tuple[int, Any]


class PluginEventServer:
    """Serve ``service`` on ``socket_path``; ``ready`` gates STATUS (and nothing else)."""

    def __init__(self, service: CaptureService, socket_path: str) -> None:
        self.service = service
        self.socket_path = socket_path
        self.ready = threading.Event()
        self.not_ready_reason = "starting"
        self._server: asyncio.AbstractServer | None = None
        self._routes: dict[tuple[str, str], Callable[[Any], Awaitable[Response]]] = {
            ("POST", "/v1/add"): self._verb(service.add),
            ("POST", "/v1/check"): self._verb(service.check),
            ("POST", "/v1/del"): self._verb(service.delete),
            ("POST", "/v1/gc"): self._gc,
            ("GET", "/v1/status"): self._status,
            ("POST", "/v1/log"): self._log,
        }

    async def start(self) -> None:
        os.makedirs(os.path.dirname(self.socket_path) or ".", mode=0o755, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self._server = await asyncio.start_unix_server(self._handle, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)
        log.info("plugin events on %s", self.socket_path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    # ---- routes -----------------------------------------------------------------------------------

    def _verb(self, fn: Callable[[Attachment], dict[str, Any]]) -> Callable[[Any], Awaitable[Response]]:
        async def route(body: Any) -> Response:
            try:
                attachment = Attachment.from_json(body)
            except ValueError as exc:
                return 400, {"code": 6, "msg": str(exc)}
            return 200, await asyncio.to_thread(fn, attachment)

        return route

    async def _gc(self, body: Any) -> Response:
        valid = body.get("valid") if isinstance(body, dict) else None
        if not isinstance(valid, list):
            return 400, {"code": 6, "msg": "gc: expected {\"valid\": [...]}"}
        pairs = [(str(v.get("containerID", "")), str(v.get("ifname", ""))) for v in valid if isinstance(v, dict)]
        return 200, await asyncio.to_thread(self.service.gc, pairs)

    async def _status(self, _: Any) -> Response:
        if self.ready.is_set():
            return 200, {"ready": True}
        return 503, {"ready": False, "reason": self.not_ready_reason}

    async def _log(self, body: Any) -> Response:
        for entry in body if isinstance(body, list) else []:
            if isinstance(entry, dict):
                level = _LEVELS.get(str(entry.get("level", "info")).lower(), logging.INFO)
                fields = {k: v for k, v in entry.items() if k not in ("level", "msg")}
                plugin_log.log(level, "%s", entry.get("msg", ""), extra={"fields": fields})
        return 204, None

    # ---- HTTP -------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, payload = await self._request(reader)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            status, payload = 400, {"code": 6, "msg": "malformed request"}
        body = b"" if payload is None else json.dumps(payload).encode()
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _request(self, reader: asyncio.StreamReader) -> Response:
        request_line = (await reader.readline()).decode("latin-1").split()
        if len(request_line) != 3:
            return 400, {"code": 6, "msg": "malformed request line"}
        method, target, _ = request_line
        length = 0
        while True:
            line = (await reader.readline()).decode("latin-1").strip()
            if not line:
                break
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY:
            return 413, {"code": 6, "msg": "request too large"}
        raw = await reader.readexactly(length) if length else b""
        route = self._routes.get((method, target))
        if route is None:
            known = any(path == target for _, path in self._routes)
            return (405, {"code": 6, "msg": f"{method} not allowed on {target}"}) if known else \
                (404, {"code": 6, "msg": f"no such endpoint {target}"})
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return 400, {"code": 6, "msg": "request body is not JSON"}
        try:
            return await route(body)
        except AgentError as exc:
            status = 503 if exc.code == 11 else 500
            return status, {"code": exc.code, "msg": exc.msg, "details": exc.details}
        except Exception as exc:  # reported to the plugin as a CNI error, never a dropped connection
            log.exception("plugin event %s %s failed", method, target)
            return 500, {"code": 102, "msg": f"node agent error: {exc}"}
