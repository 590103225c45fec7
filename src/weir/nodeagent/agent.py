"""The node agent process: configuration by Istio's names, and the serving loop.

This stage serves the plugin events (``server.py``); the installer, repair controller, health
and metrics join it later. Configuration comes from flags, falling back to Istio's environment
variable names, and is validated before anything starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

from weir.capture.apply import Backend
from weir.nodeagent.server import PluginEventServer
from weir.nodeagent.service import CaptureService, Settings
from weir.nodeagent.settings import ConfigError
from weir.platform import DirectoryPods, PodSource
from weir.platform.local import StorePods

log = logging.getLogger("weir.nodeagent")

DEFAULT_RUN_DIR = "/var/run/weir-cni"
_TRUE = {"1", "t", "true", "yes"}
_FALSE = {"", "0", "f", "false", "no"}


@dataclass(frozen=True)
class AgentConfig:
    run_dir: str = DEFAULT_RUN_DIR
    pods_dir: str = ""
    runtime_db: str = ""
    exclude_namespaces: frozenset[str] = frozenset()
    pod_namespace: str = ""
    native_nftables: bool = False

    @property
    def socket_path(self) -> str:
        return os.path.join(self.run_dir, "pluginevent.sock")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.run_dir, "state")


def _bool(name: str, value: str) -> bool:
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{name}: invalid value {value!r}: expected true or false")


def config_from(flags: Mapping[str, str | None], env: Mapping[str, str]) -> AgentConfig:
    """Flags win over the environment (Istio's names); every value is checked here."""

    def pick(flag: str, var: str, default: str = "") -> tuple[str, str]:
        value = flags.get(flag)
        return (f"--{flag.replace('_', '-')}", value) if value is not None else (var, env.get(var, default))

    name, run_dir = pick("run_dir", "CNI_AGENT_RUN_DIR", DEFAULT_RUN_DIR)
    if not run_dir.startswith("/"):
        raise ConfigError(f"{name}: invalid value {run_dir!r}: must be an absolute path")
    name, pods_dir = pick("pods_dir", "WEIR_PODS_DIR")
    if pods_dir and not os.path.isdir(pods_dir):
        raise ConfigError(f"{name}: {pods_dir!r} is not a directory")
    _, runtime_db = pick("runtime_db", "WEIR_RUNTIME_DB")
    _, excluded = pick("exclude_namespaces", "EXCLUDE_NAMESPACES")
    name, nft = pick("native_nftables", "NATIVE_NFTABLES", "false")
    return AgentConfig(run_dir=run_dir, pods_dir=pods_dir, runtime_db=runtime_db,
                       exclude_namespaces=frozenset(n.strip() for n in excluded.split(",") if n.strip()),
                       pod_namespace=pick("pod_namespace", "POD_NAMESPACE")[1], native_nftables=_bool(name, nft))


async def serve(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Serve plugin events until SIGTERM/SIGINT (or ``stop``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pods: PodSource = StorePods(config.runtime_db) if config.runtime_db else DirectoryPods(config.pods_dir)
    service = CaptureService(
        pods, config.state_dir,
        Settings(exclude_namespaces=config.exclude_namespaces, agent_namespace=config.pod_namespace,
                 backend=Backend.NFTABLES if config.native_nftables else None),
    )
    server = PluginEventServer(service, config.socket_path)
    await server.start()
    server.ready.set()
    log.info("node agent ready (run dir %s)", config.run_dir)
    try:
        await stop.wait()
    finally:
        log.info("node agent stopping")
        await server.close()
