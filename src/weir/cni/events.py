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

import _socket
import json

from weir.cni._value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SOCKET_NAME = "pluginevent.sock"
DEFAULT_TIMEOUT = 5.0


class Pod(Value):
    __slots__ = ("infra_container_id", "name", "namespace", "uid")
    namespace: str
    name: str
    uid: str
    infra_container_id: str

    def __init__(self, namespace: str, name: str, uid: str = "", infra_container_id: str = "") -> None:
        self._set(namespace=namespace, name=name, uid=uid, infra_container_id=infra_container_id)


class Attachment(Value):
    """One CNI attachment: the pod, its sandbox and the addresses the chain gave it."""

    __slots__ = ("container_id", "ifname", "ips", "netns", "pod")
    container_id: str
    ifname: str
    netns: str
    pod: Pod
    ips: tuple[str, ...]

    def __init__(self, container_id: str, ifname: str, netns: str, pod: Pod, ips: tuple[str, ...] = ()) -> None:
        self._set(container_id=container_id, ifname=ifname, netns=netns, pod=pod, ips=tuple(ips))

    @property
    def key(self) -> str:
        return f"{self.container_id}_{self.ifname}"

    def to_json(self) -> dict[str, Any]:
        pod = {"namespace": self.pod.namespace, "name": self.pod.name, "uid": self.pod.uid,
               "infra_container_id": self.pod.infra_container_id}
        return {"container_id": self.container_id, "ifname": self.ifname, "netns": self.netns, "pod": pod,
                "ips": list(self.ips)}

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


def _request(path: str, timeout: float, method: str, target: str, payload: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 exchange on a UNIX socket (``Connection: close``). A minimal client: the
    plugin must start fast, and ``http.client`` alone costs it more than 20 ms of imports."""
    head = (f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n").encode()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # not socket.py: its enums cost ~7 ms
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(head + payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    raw = b"".join(chunks)
    header, sep, body = raw.partition(b"\r\n\r\n")
    status_line = header.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"malformed HTTP response from {path}")
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            body = body[: int(value.strip())]
    return int(status_line[1]), body


class AgentClient:
    """The plugin's side of the wire."""

    def __init__(self, socket_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        payload = b"" if body is None else json.dumps(body).encode()
        try:
            status, raw = _request(self.socket_path, self.timeout, method, path, payload)
        except OSError as exc:
            raise AgentUnavailable(f"node agent at {self.socket_path} unreachable: {exc}") from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            detail = raw[:200].decode(errors="replace")
            raise AgentError(102, "node agent sent a body that is not JSON", detail) from None
        if status >= 300:
            if isinstance(data, dict) and isinstance(data.get("code"), int):
                raise AgentError(data["code"], str(data.get("msg", "")), str(data.get("details", "")))
            if status == 503:
                reason = data.get("reason", "") if isinstance(data, dict) else ""
                raise AgentUnavailable(f"node agent not ready: {reason}")
            raise AgentError(102, f"node agent answered HTTP {status}", raw.decode(errors="replace"))
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
