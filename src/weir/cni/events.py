"""The wire between the weir-cni plugin and the node agent (both sides import this module).

HTTP/1.1 over a UNIX socket (``<run dir>/pluginevent.sock``), JSON bodies, one request per
connection. Standard library only: the plugin ships as a zipapp that must start fast.

  POST /v1/add     Attachment      -> 200 {"captured": bool, "reason": str}
  POST /v1/check   Attachment      -> 200 {"captured": bool, "reason": str}
  POST /v1/del     Attachment      -> 200 {"removed": bool}
  POST /v1/gc      {"valid": [{"containerID", "ifname"}]} -> 200 {"removed": [ids]}
  GET  /v1/status                  -> 200 {"ready": true} | 503 {"ready": false, "reason": str}
  POST /v1/log     [log entries]   -> 204

An error is any non-2xx status with ``{"code": int, "msg": str, "details": str}``; ``code`` is
a CNI error code (7 for a bad annotation, 100+ for weir's own) the plugin reports as is.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

SOCKET_NAME = "pluginevent.sock"
DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str = ""
    infra_container_id: str = ""


@dataclass(frozen=True)
class Attachment:
    """One CNI attachment: the pod, its sandbox and the addresses the chain gave it."""

    container_id: str
    ifname: str
    netns: str
    pod: Pod
    ips: tuple[str, ...] = field(default=())

    @property
    def key(self) -> str:
        return f"{self.container_id}_{self.ifname}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ips"] = list(self.ips)
        return data

    @classmethod
    def from_json(cls, data: Any) -> Attachment:
        if not isinstance(data, dict) or not isinstance(data.get("pod"), dict):
            raise ValueError("attachment: expected an object with a pod")
        pod = data["pod"]
        try:
            return cls(
                container_id=str(data["container_id"]),
                ifname=str(data["ifname"]),
                netns=str(data.get("netns") or ""),
                pod=Pod(str(pod["namespace"]), str(pod["name"]), str(pod.get("uid", "")),
                        str(pod.get("infra_container_id", ""))),
                ips=tuple(str(ip) for ip in data.get("ips") or ()),
            )
        except KeyError as exc:
            raise ValueError(f"attachment: missing {exc.args[0]}") from None


class AgentUnavailable(Exception):
    """The node agent could not be reached (no socket, refused, timed out)."""


class AgentError(Exception):
    """The node agent answered with an error carrying a CNI code."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AgentClient:
    """The plugin's side of the wire."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        payload = b"" if body is None else json.dumps(body).encode()
        try:
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json",
                                                              "Connection": "close"})
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnavailable(f"node agent at {self.socket_path} unreachable: {exc}") from None
        finally:
            conn.close()
        data = json.loads(raw) if raw else None
        if response.status >= 300:
            if isinstance(data, dict) and isinstance(data.get("code"), int):
                raise AgentError(data["code"], str(data.get("msg", "")), str(data.get("details", "")))
            if response.status == 503:
                reason = data.get("reason", "") if isinstance(data, dict) else ""
                raise AgentUnavailable(f"node agent not ready: {reason}")
            raise AgentError(102, f"node agent answered HTTP {response.status}", raw.decode(errors="replace"))
        return data

    def add(self, attachment: Attachment) -> dict[str, Any]:
        return dict(self.call("POST", "/v1/add", attachment.to_json()))

    def check(self, attachment: Attachment) -> dict[str, Any]:
        return dict(self.call("POST", "/v1/check", attachment.to_json()))

    def delete(self, attachment: Attachment) -> dict[str, Any]:
        return dict(self.call("POST", "/v1/del", attachment.to_json()))

    def gc(self, valid: list[dict[str, str]]) -> dict[str, Any]:
        return dict(self.call("POST", "/v1/gc", {"valid": valid}))

    def status(self) -> dict[str, Any]:
        return dict(self.call("GET", "/v1/status"))

    def log(self, entries: list[dict[str, Any]]) -> None:
        self.call("POST", "/v1/log", entries)
