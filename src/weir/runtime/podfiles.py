"""A pod's files: what Kubernetes mounts as volumes, for the embedded runtime's pods.

Each pod gets a directory (:meth:`NodeConfig.pod_dir`), named to its containers as ``WEIR_POD_DIR``:

- ``token``: a service-account token for the pod (audience ``istio-ca``), signed with the node's
  token key, as kubelet projects one; rewritten when 80% of its lifetime has passed, as kubelet does;
- ``root-cert.pem``: the mesh's trust bundle (Istio's ``istio-ca-root-cert`` ConfigMap);
- ``run/``: scratch space every container may write (mode 1777, like ``/tmp``), where the sidecar
  agent keeps its Envoy bootstrap and SDS socket (Istio's ``emptyDir`` volumes).

Files are written atomically; the directory goes with the pod.
"""

from __future__ import annotations

import os
import shutil
import time

from weir.api.pod import Pod
from weir.pki import tokens
from weir.runtime.node import NodeConfig

TOKEN = "token"  # noqa: S105 (a file name)
ROOT_CERT = "root-cert.pem"
SCRATCH = "run"
TOKEN_TTL = 12 * 3600
"""Seconds a projected token lives (Istio's injector asks for 43200)."""
REFRESH_AT = 0.8


def _write(path: str, data: bytes, mode: int) -> None:
    scratch = f"{path}.{os.getpid()}.tmp"
    try:
        with open(scratch, "wb") as f:
            f.write(data)
        os.chmod(scratch, mode)
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


def write_token(node: NodeConfig, pod: Pod, uid: str, now: float | None = None) -> None:
    if not node.token_key:
        return
    key = tokens.load_key(node.token_key)
    issued = time.time() if now is None else now
    token = tokens.mint(key, namespace=pod.metadata.namespace, service_account=pod.spec.service_account_name,
                        pod_name=pod.metadata.name, pod_uid=uid, ttl=TOKEN_TTL, now=issued)
    path = os.path.join(node.pod_dir(uid), TOKEN)
    # readable by the pod's users (the sidecar runs as 1337), as a projected volume is
    _write(path, token.encode(), 0o644)
    os.utime(path, (issued, issued))  # refresh_token ages the token by its mtime: the issue time


def create(node: NodeConfig, pod: Pod, uid: str) -> str:
    """Make the pod's directory and files; returns the directory."""
    directory = node.pod_dir(uid)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    scratch = os.path.join(directory, SCRATCH)
    os.makedirs(scratch, exist_ok=True)
    os.chmod(scratch, 0o1777)  # noqa: S103 (scratch for every container, sticky as /tmp)
    write_token(node, pod, uid)
    if node.ca_root_cert:
        with open(node.ca_root_cert, "rb") as f:
            _write(os.path.join(directory, ROOT_CERT), f.read(), 0o644)
    return directory


def refresh_token(node: NodeConfig, pod: Pod, uid: str, now: float | None = None) -> bool:
    """Rewrite the token once 80% of its lifetime has passed; True when it was rewritten."""
    path = os.path.join(node.pod_dir(uid), TOKEN)
    current = time.time() if now is None else now
    try:
        age = current - os.stat(path).st_mtime
    except FileNotFoundError:
        return False
    if age < TOKEN_TTL * REFRESH_AT:
        return False
    write_token(node, pod, uid, current)
    return True


def remove(node: NodeConfig, uid: str) -> None:
    shutil.rmtree(node.pod_dir(uid), ignore_errors=True)
