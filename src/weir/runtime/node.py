"""The embedded node: where everything lives, and ``weir node init`` that sets it up.

A node is a primary CNI chain on its own bridge and subnet (bridge + host-local + portmap,
the reference plugins) with weir-cni chained last, in weir-owned directories under a root
(``/`` by default): config in ``<root>/etc/weir``, state in ``<root>/var/lib/weir``, logs in
``<root>/var/log/weir``, the agent's run directory in ``<root>/var/run/weir-cni``. The node
file ``<root>/etc/weir/node.json`` records the choices so every later command finds them.
``node_netns`` lets the plugins run inside a namespace instead of the host's (tests use it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from weir.cni.bundle import build as build_plugin

REFERENCE_PLUGINS = "/usr/lib/cni"
NETWORK_NAME = "weir"
NODE_FILE = "etc/weir/node.json"


class NodeError(Exception):
    """The node is not set up, or a node setting is bad. The message names it."""


@dataclass(frozen=True)
class NodeConfig:
    root: str = "/"
    bridge: str = "weir0"
    subnet: str = "10.213.0.0/16"
    masquerade: bool = False
    node_netns: str = ""
    exclude_namespaces: tuple[str, ...] = ("kube-system",)
    fail_open_namespaces: tuple[str, ...] = ()
    backoff_seconds: float = 10.0
    cni_version: str = "1.0.0"
    token_key: str = ""
    """A key file (:mod:`weir.pki.tokens`): each pod gets a service-account token signed with it in
    ``<pod dir>/token``, as kubelet projects one (audience ``istio-ca``). Empty: no tokens."""
    ca_root_cert: str = ""
    """The mesh's trust bundle; copied into each pod as ``<pod dir>/root-cert.pem`` (Istio's
    ``istio-ca-root-cert`` ConfigMap). Empty: none."""
    extra: dict[str, Any] = field(default_factory=dict)

    def _p(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def conf_dir(self) -> str:
        return self._p("etc", "weir", "cni", "net.d")

    @property
    def conflist(self) -> str:
        return os.path.join(self.conf_dir, f"10-{NETWORK_NAME}.conflist")

    @property
    def bin_dir(self) -> str:
        return self._p("var", "lib", "weir", "cni", "bin")

    @property
    def cni_path(self) -> list[str]:
        return [self.bin_dir, REFERENCE_PLUGINS]

    @property
    def tools_dir(self) -> str:
        """Holds the ``weir`` launcher; first on every container's PATH."""
        return self._p("var", "lib", "weir", "bin")

    @property
    def cache_dir(self) -> str:
        return self._p("var", "lib", "weir", "cni", "cache")

    @property
    def ipam_dir(self) -> str:
        return self._p("var", "lib", "weir", "cni", "networks")

    @property
    def db(self) -> str:
        return self._p("var", "lib", "weir", "runtime.db")

    @property
    def pods_dir(self) -> str:
        return self._p("var", "lib", "weir", "pods")

    def pod_dir(self, uid: str) -> str:
        """What volumes are for a pod in Kubernetes: its token, trust bundle and a scratch directory."""
        return os.path.join(self.pods_dir, uid)

    @property
    def log_dir(self) -> str:
        return self._p("var", "log", "weir", "pods")

    @property
    def run_dir(self) -> str:
        return self._p("var", "run", "weir-cni")

    def conflist_doc(self) -> dict[str, Any]:
        return {
            "cniVersion": self.cni_version,
            "name": NETWORK_NAME,
            "plugins": [
                {"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": self.masquerade,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "dataDir": self.ipam_dir, "ranges": [[{"subnet": self.subnet}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
                {"type": "weir-cni", "cni_agent_run_dir": self.run_dir,
                 "exclude_namespaces": list(self.exclude_namespaces),
                 "fail_open_namespaces": list(self.fail_open_namespaces)},
            ],
        }


def validate(config: NodeConfig) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", config.bridge):
        raise NodeError(f"bridge: invalid name {config.bridge!r} (1-15 letters, digits, '_', '.', '-')")
    try:
        net = ipaddress.ip_network(config.subnet)
    except ValueError:
        raise NodeError(f"subnet: invalid value {config.subnet!r}: expected a CIDR such as 10.213.0.0/16") from None
    if net.version != 4 or net.prefixlen > 28:
        raise NodeError(f"subnet: {config.subnet} must be an IPv4 network of /28 or larger")
    if config.node_netns and not os.path.exists(config.node_netns):
        raise NodeError(f"node netns: {config.node_netns} does not exist")
    if not 0 < config.backoff_seconds <= 300:
        raise NodeError(f"backoff: {config.backoff_seconds} must be more than 0 and at most 300 seconds")


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def init_node(config: NodeConfig) -> NodeConfig:
    """Write the conflist, install the plugin and record the node (all atomically, idempotent)."""
    validate(config)
    for directory in (config.bin_dir, config.cache_dir, config.ipam_dir, config.log_dir, config.run_dir):
        os.makedirs(directory, mode=0o755, exist_ok=True)
    build_plugin(os.path.join(config.bin_dir, "weir-cni"))
    os.makedirs(config.tools_dir, mode=0o755, exist_ok=True)
    launcher = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m weir "$@"\n'
    _write(os.path.join(config.tools_dir, "weir"), launcher, 0o755)
    _write(config.conflist, json.dumps(config.conflist_doc(), indent=2, sort_keys=True) + "\n")
    data = asdict(config)
    _write(os.path.join(config.root, NODE_FILE), json.dumps(data, indent=2, sort_keys=True) + "\n")
    return config


def load_node(root: str = "/") -> NodeConfig:
    path = os.path.join(root, NODE_FILE)
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NodeError(f"this node is not set up ({path} is missing): run `weir node init` first") from None
    except (OSError, ValueError) as exc:
        raise NodeError(f"{path}: unreadable node file: {exc}") from None
    try:
        data["exclude_namespaces"] = tuple(data.get("exclude_namespaces", ()))
        data["fail_open_namespaces"] = tuple(data.get("fail_open_namespaces", ()))
        return NodeConfig(**data)
    except TypeError as exc:
        raise NodeError(f"{path}: {exc}") from None
