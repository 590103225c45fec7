"""weir.control.server: the control plane from temporary stores to a gRPC ADS client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.unit.test_ads import Client, request
from weir.api.load import load_documents
from weir.control.server import ControlPlane, proxy_info
from weir.control.store import ConfigStore
from weir.control.xds_convert import CLUSTER
from weir.platform.local import PodStore

REVIEWS = "outbound|9080||reviews.default.svc.cluster.local"
RATINGS = "outbound|9080||ratings.default.svc.cluster.local"


def _service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 9080}]}}


def _pod(name: str, app: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default",
                                                             "labels": {"app": app}},
            "spec": {"containers": [{"name": "app", "image": "app", "command": ["/app"],
                                     "ports": [{"name": "http", "containerPort": 9080}]}]}}


def apply(store: ConfigStore, *docs: dict[str, Any]) -> None:
    store.apply(load_documents(json.dumps(list(docs)), "test", json.loads))


def node() -> Any:
    proto = discovery_pb2.DiscoveryRequest().node
    proto.id = "sidecar~10.244.0.20~productpage-1.default~default.svc.cluster.local"
    proto.metadata.update({"NAMESPACE": "default", "NAME": "productpage-1", "INSTANCE_IPS": "10.244.0.20",
                           "SERVICE_ACCOUNT": "default", "LABELS": {"app": "productpage"}})
    return proto


def clusters(response: Any) -> dict[str, Any]:
    out = {}
    for resource in response.resources:
        cluster = cluster_pb2.Cluster()
        assert resource.Unpack(cluster)
        out[cluster.name] = cluster
    return out


def endpoints(cluster: Any) -> list[str]:
    return sorted(lb.endpoint.address.socket_address.address
                  for group in cluster.load_assignment.endpoints for lb in group.lb_endpoints)


def test_proxy_info_from_istio_node_metadata() -> None:
    info = proxy_info({"NAMESPACE": "prod", "POD_NAME": "web-1", "INSTANCE_IPS": "10.0.0.5,fd00::5",
                       "LABELS": {"app": "web"}})
    assert (info.namespace, info.name, info.ip, dict(info.labels), info.service_account) == (
        "prod", "web-1", "10.0.0.5", {"app": "web"}, "default")
    with pytest.raises(ValueError, match="NAMESPACE"):
        proxy_info({"NAME": "x"})


def test_serves_store_and_runtime_pods_and_pushes_changes(tmp_path: Path) -> None:
    store = ConfigStore(str(tmp_path / "control.db"))
    apply(store, _service("reviews"))
    runtime = PodStore(str(tmp_path / "runtime.db"))
    runtime.create("uid-1", _pod("reviews-1", "reviews"), {"phase": "Running", "podIP": "10.244.0.31"})
    runtime.create("uid-2", _pod("reviews-2", "reviews"), {"phase": "Pending"})  # no IP yet: no endpoint

    async def main() -> None:
        plane = ControlPlane(store.path, runtime.path, ads_address="127.0.0.1:0", poll_interval=0.1)
        target = await plane.start()
        try:
            async with grpc.aio.insecure_channel(target) as channel:
                client = Client(channel)
                cds = await client.ask(request(CLUSTER, node=node()))
                assert cds.version_info == "1"
                assert endpoints(clusters(cds)[REVIEWS]) == ["10.244.0.31"]
                await client.outbox.put(request(CLUSTER, version="1", nonce=cds.nonce))

                # a new Service in the store: pushed by the watcher
                apply(store, _service("ratings"))
                pushed = await client.recv()
                assert (pushed.type_url, pushed.version_info) == (CLUSTER, "2")
                assert RATINGS in clusters(pushed)
                await client.outbox.put(request(CLUSTER, version="2", nonce=pushed.nonce))

                # the runtime's second pod gets its IP: a new endpoint
                (record,) = [r for r in runtime.pods() if r.name == "reviews-2"]
                runtime.update(record.uid, status={"phase": "Running", "podIP": "10.244.0.32"})
                pushed = await client.recv()
                assert pushed.version_info == "3"
                assert endpoints(clusters(pushed)[REVIEWS]) == ["10.244.0.31", "10.244.0.32"]
                await client.outbox.put(request(CLUSTER, version="3", nonce=pushed.nonce))

                # nothing changed: no new version, however long the watcher polls
                await asyncio.sleep(0.5)
                status = plane.status()
                assert (status.address, status.store_version, status.config_version) == (target, 2, "3")
                assert (status.services, status.pods, status.last_error) == (2, 2, "")
                (proxy,) = status.proxies
                assert proxy.node.metadata["NAMESPACE"] == "default"
                assert proxy.types["CDS"].state == "SYNCED"
                await client.outbox.put(None)
        finally:
            await plane.stop(grace=1)
        assert plane.ads.status() == ()

    asyncio.run(main())


def test_control_run_serves_until_sigterm(tmp_path: Path) -> None:
    socket_path = tmp_path / "ads.sock"
    proc = subprocess.Popen([sys.executable, "-m", "weir", "control", "run", "--store", str(tmp_path / "c.db"),
                             "--ads-address", f"unix:{socket_path}", "--log-format", "text"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        serving = f"weir control: serving ADS on unix:{socket_path} (store {tmp_path / 'c.db'})\n"
        lines: list[str] = []
        while (line := proc.stderr.readline()) and line != serving:
            lines.append(line)
        assert line == serving, lines
        assert socket_path.exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
