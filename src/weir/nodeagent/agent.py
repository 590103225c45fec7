"""The node agent process (Istio's istio-cni-node): everything it runs, started and stopped in order.

  metrics        :15014/metrics (Prometheus)                    monitoring.py
  health         :8000/healthz, /readyz (ready = all gates open)  health.py
  plugin events  <run dir>/pluginevent.sock                      server.py + service.py
  installer      plugin + config in place, watched, cleaned up   installer.py
  repair         pods that raced the plugin                      repairer.py

Readiness has two gates: the installer's config is valid, and the plugin-event server is up;
the plugin's STATUS answers from the same gates. Settings come from flags over Istio's
environment names and are all checked before anything starts. On SIGTERM the agent stops
repair, stops watching, removes only weir's entry, kubeconfig and binary (``installer.cleanup``),
then closes its servers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from weir.capture.apply import Backend
from weir.cni.events import AgentError, Attachment
from weir.nodeagent.health import HealthServer, Readiness
from weir.nodeagent.install import InstallConfig
from weir.nodeagent.installer import Installer
from weir.nodeagent.monitoring import Metrics, MetricsServer, monitoring_port
from weir.nodeagent.repair import RepairConfig
from weir.nodeagent.repairer import CaptureRepair, RepairController, RepairCounts
from weir.nodeagent.server import PluginEventServer
from weir.nodeagent.service import CaptureService, Settings
from weir.nodeagent.settings import ConfigError, Source
from weir.platform import DirectoryPods, PodBackend, PodSource
from weir.platform.local import StorePods

log = logging.getLogger("weir.nodeagent")

DEFAULT_RUN_DIR = "/var/run/weir-cni"
READINESS_PORT = 8000


@dataclass(frozen=True)
class AgentConfig:
    install: InstallConfig
    repair: RepairConfig
    pods_dir: str = ""
    runtime_db: str = ""
    install_cni: bool = True
    monitoring_port: int = 15014
    readiness_port: int = READINESS_PORT
    listen_address: str = "0.0.0.0"

    @property
    def run_dir(self) -> str:
        return self.install.run_dir

    @property
    def exclude_namespaces(self) -> frozenset[str]:
        return frozenset(self.install.exclude_namespaces)

    @property
    def pod_namespace(self) -> str:
        return self.install.pod_namespace

    @property
    def native_nftables(self) -> bool:
        return self.install.native_nftables

    @property
    def socket_path(self) -> str:
        return os.path.join(self.run_dir, "pluginevent.sock")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.run_dir, "state")


def config_from(flags: Mapping[str, str | None], env: Mapping[str, str]) -> AgentConfig:
    """Every setting, flags over Istio's environment names, checked before anything starts."""
    src = Source(flags, env)
    install = InstallConfig.from_source(src)
    repair = RepairConfig.from_source(src)
    name, pods_dir = src.get("pods-dir", "WEIR_PODS_DIR")
    if pods_dir and not os.path.isdir(pods_dir):
        raise ConfigError(f"{name}: {pods_dir!r} is not a directory")
    return AgentConfig(
        install=install, repair=repair, pods_dir=pods_dir, runtime_db=src.text("runtime-db", "WEIR_RUNTIME_DB"),
        install_cni=src.boolean("install-cni", "WEIR_INSTALL_CNI", True),
        monitoring_port=monitoring_port(flags, env),
        readiness_port=src.integer("readiness-port", "WEIR_READINESS_PORT", READINESS_PORT, maximum=65535),
        listen_address=src.text("listen-address", "WEIR_LISTEN_ADDRESS", "0.0.0.0"),
    )


class MeteredService(CaptureService):
    """The capture service, counting every plugin request and timing ADD."""

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def _timed(self, command: str, fn: Any, *args: Any) -> dict[str, Any]:
        started = time.monotonic()
        try:
            result: dict[str, Any] = fn(*args)
        except AgentError:
            self.metrics.plugin_request(command, "error", time.monotonic() - started)
            raise
        self.metrics.plugin_request(command, "success", time.monotonic() - started)
        return result

    def add(self, att: Attachment) -> dict[str, Any]:
        return self._timed("ADD", super().add, att)

    def check(self, att: Attachment) -> dict[str, Any]:
        return self._timed("CHECK", super().check, att)

    def delete(self, att: Attachment) -> dict[str, Any]:
        return self._timed("DEL", super().delete, att)

    def gc(self, valid: Any) -> dict[str, Any]:
        return self._timed("GC", super().gc, valid)


class _Gates:
    """Installer observer: feeds metrics and readiness, and the plugin's STATUS."""

    def __init__(self, metrics: Metrics, readiness: Readiness, server: PluginEventServer) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.server = server
        self.reason: Any = lambda: "the CNI config is not in place"
        self._ever_ready = False

    def install_result(self, result: str) -> None:
        self.metrics.install_result(result)

    def set_ready(self, ready: bool) -> None:
        self.metrics.set_ready(ready)
        if ready:
            self.readiness.open("install")
        else:
            self.readiness.close("install", self.reason())
        self.update()

    def update(self) -> None:
        if self.readiness():
            self.server.ready.set()
            if not self._ever_ready:
                self._ever_ready = True
                self.metrics.became_ready()
        else:
            self.server.ready.clear()
            self.server.not_ready_reason = self.readiness.reason()


async def serve(config: AgentConfig, *, pods: PodSource | None = None, repair_backend: PodBackend | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``stop``), then shut down in order."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = Metrics()
    readiness = Readiness("install", "plugin-server")
    if pods is None:
        pods = StorePods(config.runtime_db) if config.runtime_db else DirectoryPods(config.pods_dir)
    service = MeteredService(
        pods, config.state_dir,
        Settings(exclude_namespaces=config.exclude_namespaces, agent_namespace=config.pod_namespace,
                 backend=Backend.NFTABLES if config.native_nftables else None),
        metrics=metrics,
    )
    server = PluginEventServer(service, config.socket_path)
    metrics_server = MetricsServer(metrics, config.listen_address, config.monitoring_port)
    health = HealthServer(readiness, readiness.reason, config.listen_address, config.readiness_port)
    gates = _Gates(metrics, readiness, server)
    installer = Installer(config.install, observers=[gates]) if config.install_cni else None
    if installer is not None:
        gates.reason = lambda: installer.not_ready_reason or "the CNI config is not in place"
    metrics_server.start()
    health.start()
    await server.start()
    readiness.open("plugin-server")
    watching = threading.Event()
    install_thread = None
    if installer is None:
        gates.set_ready(True)
    else:
        install_thread = threading.Thread(target=installer.run, args=(watching,), name="weir-installer", daemon=True)
        install_thread.start()
    controller = None
    if config.repair.mode is not None and repair_backend is not None:
        controller = RepairController(repair_backend, config.repair, CaptureRepair(service),
                                      counts=RepairCounts(metrics.repair))
        if installer is not None:
            # Repair only once the plugin is in the chain: a pod deleted before then would come back uncaptured.
            while not stop.is_set() and not await asyncio.to_thread(installer.wait_ready, 0.5):
                pass
        if not stop.is_set():
            controller.start()
    log.info("node agent running (run dir %s, repair %s)", config.run_dir,
             config.repair.mode.value if config.repair.mode and controller else "off")
    try:
        await stop.wait()
    finally:
        log.info("node agent stopping")
        if controller is not None:
            await asyncio.to_thread(controller.stop, 10)
        if installer is not None and install_thread is not None:
            watching.set()
            await asyncio.to_thread(install_thread.join, 10)
            await asyncio.to_thread(installer.cleanup)
        await server.close()
        await asyncio.to_thread(health.stop)
        await asyncio.to_thread(metrics_server.stop)
