"""The control-plane process (istiod's core): config store + runtime pods -> registry -> ADS push.

:class:`ControlPlane` reads the resources of the :class:`~weir.control.store.ConfigStore` and,
in embedded mode, the running pods of the runtime's :class:`~weir.platform.local.PodStore`
(those with a ``status.podIP``; a pod there wins over one of the same name in the store),
builds a :class:`~weir.control.registry.Snapshot` and its registry, and serves them over ADS.
What each sidecar gets is :func:`compile_proxy` for the :class:`ProxyInfo` its Envoy node
metadata describes (:func:`proxy_info`, Istio's keys as :func:`weir.agent.bootstrap.node_metadata`
sends them).

Each proxy also gets the DNS name table (:func:`weir.control.nds.name_table`); the agent's own
stream (node metadata ``WEIR_XDS_CLIENT=agent``) gets only that, with no Envoy config compiled.

A watcher polls (every ``poll_interval`` s) the store version and the runtime pods' name, IP,
phase and labels, and pushes a new snapshot only when they changed. Config that no longer
loads is logged and the last good snapshot kept. With a :class:`~weir.control.casvc.CaService`
the process also serves the CA over TLS (with the runtime's pods as the check that a token's
pod still exists), and with a debug address istiod's ``/ready``, ``/debug/syncz``,
``/debug/registryz`` and ``/debug/status`` (what ``weir status`` shows).
:meth:`ControlPlane.stop` ends the watcher, the debug server, the CA and the ADS streams.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - this is the control plane's driver (watcher task, ADS server)
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from weir.api.errors import ManifestError
from weir.api.load import Resource
from weir.api.pod_model import Pod
from weir.api.pod_parse import parse_pod
from weir.control.ads import AdsServer, NodeInfo, ProxyStatus
from weir.control.casvc import DEFAULT_PORT as CA_PORT
from weir.control.casvc import CaServer, CaService
from weir.control.compile import EnvoyResources, Options, OutboundCache, ProxyInfo, compile_proxy
from weir.control.nds import name_table
from weir.control.registry import Registry, Snapshot, build_registry
from weir.control.store import ConfigStore
from weir.platform.httpserve import Answer, HttpServer
from weir.platform.local import PodRecord, PodStore
from weir.platform.nds import AGENT_CLIENT, AGENT_CLIENT_KEY

log = logging.getLogger(__name__)

DEFAULT_ADS_ADDRESS = "127.0.0.1:15010"
DEFAULT_DEBUG_ADDRESS = "127.0.0.1:15014"
"""istiod's monitoring and debug port: ``/ready``, ``/debug/syncz``, ``/debug/registryz``, ``/debug/status``."""
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_OPTIONS = Options()

PodKey = tuple[str, str, str, str, tuple[tuple[str, str], ...]]
"""(namespace, name, podIP, phase, sorted labels): what makes a runtime pod's endpoints change."""


@dataclass(frozen=True)
class MeshConfig:
    """One version of what the control plane serves."""

    snapshot: Snapshot
    registry: Registry
    store_version: int
    name_table: dict[str, Any]
    """The DNS name table (the same for every proxy), built once per version."""
    pods: Mapping[tuple[str, str], Pod] = field(default_factory=dict, compare=False)
    """The snapshot's pods by (namespace, name), for proxies that do not send their labels."""
    outbound: OutboundCache = field(default_factory=dict, compare=False)
    """Each namespace's outbound config, compiled once per version (see ``compile_proxy``)."""


@dataclass(frozen=True)
class ControlStatus:
    address: str
    """The bound ADS address ("" before start)."""
    store_version: int
    """The store version the served config was built from (-1: none yet)."""
    config_version: str
    """The ADS version ("0" before the first snapshot)."""
    services: int
    pods: int
    last_error: str
    """Why the latest store contents could not be served ("" when they are)."""
    proxies: tuple[ProxyStatus, ...]


def proxy_info(metadata: Mapping[str, Any]) -> ProxyInfo:
    """Istio's node metadata (``NAMESPACE``, ``NAME`` or ``POD_NAME``, ``INSTANCE_IPS``, ``LABELS``,
    ``SERVICE_ACCOUNT``) -> the proxy to compile for. Raises ``ValueError`` without a namespace."""
    namespace = metadata.get("NAMESPACE")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("node metadata has no NAMESPACE")
    name = metadata.get("NAME") or metadata.get("POD_NAME") or ""
    ips = metadata.get("INSTANCE_IPS") or ""
    labels = metadata.get("LABELS") or {}
    account = metadata.get("SERVICE_ACCOUNT") or "default"
    return ProxyInfo(namespace=namespace, name=str(name), ip=str(ips).split(",")[0].strip(),
                     labels=MappingProxyType({str(k): str(v) for k, v in dict(labels).items()}),
                     service_account=str(account))


def _pod_key(record: PodRecord) -> PodKey:
    labels = (record.manifest.get("metadata") or {}).get("labels") or {}
    return (record.namespace, record.name, str(record.status.get("podIP") or ""), record.phase,
            tuple(sorted((str(k), str(v)) for k, v in labels.items())))


class ControlPlane:
    """See the module docstring. ``runtime_db``: the embedded runtime's pod database, if any."""

    def __init__(self, store_path: str, runtime_db: str | None = None, *, ads_address: str = DEFAULT_ADS_ADDRESS,
                 poll_interval: float = DEFAULT_POLL_INTERVAL, options: Options = DEFAULT_OPTIONS,
                 debug_address: str | None = None, ca: CaService | None = None,
                 ca_address: str | None = None) -> None:
        self.store = ConfigStore(store_path)
        self.ca_server: CaServer | None = None
        self.ca_address = ca_address
        if ca is not None:
            if ca.pod_check is None and runtime_db is not None:
                ca.pod_check = self._pod_exists
            self.ca_server = CaServer(ca)
        self.debug: HttpServer | None = None
        if debug_address is not None:
            host, _, port = debug_address.rpartition(":")
            self.debug = HttpServer(self._debug, host, int(port))
        self.runtime_db = runtime_db
        self.ads_address = ads_address
        self.poll_interval = poll_interval
        self.options = options
        self.ads: AdsServer[MeshConfig] = AdsServer(self._resources_for)
        self._address = ""
        self._seen: tuple[int, tuple[PodKey, ...]] | None = None
        self._config: MeshConfig | None = None
        self._last_error = ""
        self._watcher: asyncio.Task[None] | None = None

    def _resources_for(self, node: NodeInfo, config: MeshConfig) -> EnvoyResources:
        table = config.name_table
        if node.metadata.get(AGENT_CLIENT_KEY) == AGENT_CLIENT:
            # the sidecar agent's own stream asks only for DNS tables: compile no Envoy config for it
            return EnvoyResources(listeners=(), clusters=(), routes=(), secrets=(), name_table=table)
        info = proxy_info(node.metadata)
        if not info.labels:  # an agent that sent no labels: the pod's own, from the runtime or the store
            pod = config.pods.get((info.namespace, info.name))
            if pod is not None:
                info = replace(info, labels=MappingProxyType(dict(pod.metadata.labels)),
                               service_account=pod.spec.service_account_name)
        resources = compile_proxy(config.snapshot, config.registry, info, self.options, config.outbound)
        return replace(resources, name_table=table)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> str:
        """Build the first snapshot, serve ADS and start the watcher; returns the bound ADS address."""
        await self.refresh()
        self._address = await self.ads.start(self.ads_address)
        try:
            if self.ca_server is not None:
                self.ca_address = await self.ca_server.start(self.ca_address or f"127.0.0.1:{CA_PORT}")
            if self.debug is not None:
                await self.debug.start()
        except OSError:
            if self.ca_server is not None:
                await self.ca_server.stop(0)
            await self.ads.stop(0)
            raise
        self._watcher = asyncio.create_task(self._watch(), name="control-watch")
        return self._address

    async def stop(self, grace: float = 5.0) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if self.debug is not None:
            await self.debug.stop()
        if self.ca_server is not None:
            await self.ca_server.stop(grace)
        await self.ads.stop(grace)

    def _pod_exists(self, namespace: str, name: str, uid: str) -> bool:
        """The CA's check that a token's pod (that very uid) still runs on this node."""
        assert self.runtime_db is not None
        record = PodStore(self.runtime_db).get(namespace, name)
        return record is not None and record.uid == uid and not record.deleting

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception:  # a locked or unreadable database: try again next round
                log.exception("control plane: cannot read the config")

    # --- config ---------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Push a new snapshot if the store or the runtime's pods changed; True when one was pushed."""
        config = await asyncio.to_thread(self._load)  # SQLite reads and compilation, off the event loop
        if config is None:
            return False
        self._config = config
        version = self.ads.set_snapshot(config)  # on the loop: it wakes the streams' pushers
        log.info("control plane: config version %s (store version %d, %d services, %d pods)", version,
                 config.store_version, len(config.registry.services), len(config.snapshot.pods))
        return True

    def _runtime_pods(self) -> list[PodRecord]:
        if self.runtime_db is None:
            return []
        return [r for r in PodStore(self.runtime_db).pods() if not r.deleting and r.status.get("podIP")]

    def _load(self) -> MeshConfig | None:
        """A new config when the store or the pods changed since the last call, else None."""
        store_version = self.store.version
        records = self._runtime_pods()
        seen = (store_version, tuple(sorted(_pod_key(r) for r in records)))
        if seen == self._seen:
            return None
        self._seen = seen
        try:
            store_version, resources = self.store.resources()
        except ManifestError as exc:
            self._last_error = str(exc)
            log.error("control plane: the config store no longer loads (serving version %s): %s",
                      self.ads.version, exc)
            return None
        pods: dict[tuple[str, str], Resource] = {}
        for record in records:
            try:
                pods[(record.namespace, record.name)] = parse_pod(record.as_object(), f"runtime pod {record.name}")
            except ManifestError as exc:
                log.warning("control plane: skipping runtime pod %s/%s: %s", record.namespace, record.name, exc)
        from_store = [r for r in resources
                      if not (r.kind == "Pod" and (r.metadata.namespace, r.metadata.name) in pods)]
        snapshot = Snapshot.of([*from_store, *pods.values()])
        self._last_error = ""
        registry = build_registry(snapshot)
        return MeshConfig(snapshot, registry, store_version, name_table(registry),
                          pods={(p.metadata.namespace, p.metadata.name): p for p in snapshot.pods})

    def status(self) -> ControlStatus:
        config = self._config
        return ControlStatus(address=self._address, store_version=config.store_version if config else -1,
                             config_version=self.ads.version,
                             services=len(config.registry.services) if config else 0,
                             pods=len(config.snapshot.pods) if config else 0,
                             last_error=self._last_error, proxies=self.ads.status())

    # --- debug endpoints (istiod's :15014) --------------------------------------------------

    async def _debug(self, path: str, query: str) -> Answer:
        if path == "/ready":
            ready = self._config is not None and bool(self._address)
            return Answer(200 if ready else 503, "ready\n" if ready else "no config served yet\n")
        if path == "/debug/syncz":
            return Answer.json([proxy_status_json(p) for p in self.ads.status()])
        if path == "/debug/status":
            return Answer.json(status_json(self.status()))
        if path == "/debug/registryz":
            config = self._config
            return Answer.json([] if config is None else [
                {"hostname": s.hostname, "namespace": s.namespace, "vip": str(s.vip) if s.vip else None,
                 "resolution": s.resolution, "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol}
                                                      for p in s.ports],
                 "endpoints": {str(port): [f"{e.address}:{e.port}" for e in eps] for port, eps in s.endpoints.items()}}
                for s in config.registry.services])
        return Answer(404, f"no such endpoint: {path} (try /ready, /debug/syncz, /debug/status, /debug/registryz)\n")


def proxy_status_json(proxy: ProxyStatus) -> dict[str, Any]:
    meta = proxy.node.metadata
    return {"id": proxy.node.id, "namespace": meta.get("NAMESPACE", ""), "name": meta.get("NAME", ""),
            "peer": proxy.peer, "connected_at": proxy.connected_at,
            "types": {name: {"sent": t.sent_version, "acked": t.acked_version, "state": t.state,
                             "nack": t.last_nack.message if t.last_nack else ""} for name, t in proxy.types.items()}}


def status_json(status: ControlStatus) -> dict[str, Any]:
    return {"address": status.address, "store_version": status.store_version,
            "config_version": status.config_version, "services": status.services, "pods": status.pods,
            "last_error": status.last_error, "proxies": [proxy_status_json(p) for p in status.proxies]}
