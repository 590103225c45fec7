"""weir.control.server's debug endpoints (istiod's :15014) on 127.0.0.1 with free ports, from a
real temporary config store and runtime pod database, and the CA's pod check wiring."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from weir.api.load import load_documents
from weir.control.ca import CertificateAuthority
from weir.control.casvc import CaService
from weir.control.server import ControlPlane
from weir.control.store import ConfigStore
from weir.platform.local import PodStore

KEY = b"k" * 32


def service(name: str, cluster_ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": {"app": name}, "ports": [{"name": "http", "port": 8080}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "demo"}, "spec": spec}


def runtime_pod(name: str, app: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "demo", "labels": {"app": app}},
            "spec": {"containers": [{"name": "app", "command": ["/app"],
                                     "ports": [{"name": "http", "containerPort": 8080}]}]}}


def apply(store: ConfigStore, *docs: dict[str, Any]) -> None:
    store.apply(load_documents(json.dumps(list(docs)), "test", json.loads))


async def fetch(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET ``path``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    status_line, *lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers.get("content-type", ""), body


async def fetch_json(port: int, path: str) -> Any:
    status, content_type, body = await fetch(port, path)
    assert (status, content_type) == (200, "application/json"), body
    return json.loads(body)


def with_plane(tmp_path: Path, test: Callable[[ControlPlane], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        plane = ControlPlane(str(tmp_path / "control.db"), ads_address="127.0.0.1:0",
                             debug_address="127.0.0.1:0", **kwargs)
        try:
            address = await plane.start()
            assert address.startswith("127.0.0.1:")
            assert not address.endswith(":0")
            assert plane.debug is not None
            assert plane.debug.port > 0
            await test(plane)
        finally:
            await plane.stop(0)
    asyncio.run(main())


def debug_port(plane: ControlPlane) -> int:
    assert plane.debug is not None
    return plane.debug.port


def test_ready_and_status_after_start(tmp_path: Path) -> None:
    apply(ConfigStore(str(tmp_path / "control.db")), service("backend"))

    async def test(plane: ControlPlane) -> None:
        status, _, body = await fetch(debug_port(plane), "/ready")
        assert (status, body) == (200, "ready\n")
        got = await fetch_json(debug_port(plane), "/debug/status")
        assert got["store_version"] == 1
        assert got["config_version"] == plane.ads.version != "0"
        assert (got["services"], got["pods"], got["last_error"], got["proxies"]) == (1, 0, "", [])
        assert got["address"] == plane.status().address
    with_plane(tmp_path, test)


def test_registryz_lists_services_with_their_vips_and_endpoints(tmp_path: Path) -> None:
    apply(ConfigStore(str(tmp_path / "control.db")), service("backend", "10.96.0.20"), service("auto"))
    runtime = PodStore(str(tmp_path / "runtime.db"))
    runtime.create("uid-b", runtime_pod("backend-1", "backend"), {"phase": "Running", "podIP": "10.213.0.9"})

    async def test(plane: ControlPlane) -> None:
        services = {s["hostname"]: s for s in await fetch_json(debug_port(plane), "/debug/registryz")}
        assert set(services) == {"backend.demo.svc.cluster.local", "auto.demo.svc.cluster.local"}
        backend = services["backend.demo.svc.cluster.local"]
        assert backend["vip"] == "10.96.0.20"
        assert backend["namespace"] == "demo"
        assert backend["ports"] == [{"name": "http", "port": 8080, "protocol": "HTTP"}]
        assert backend["endpoints"] == {"8080": ["10.213.0.9:8080"]}
        ipaddress.ip_address(services["auto.demo.svc.cluster.local"]["vip"])  # one is allocated
        assert services["auto.demo.svc.cluster.local"]["endpoints"] == {"8080": []}
    with_plane(tmp_path, test, runtime_db=str(tmp_path / "runtime.db"))


def test_a_config_change_shows_in_the_debug_endpoints(tmp_path: Path) -> None:
    store = ConfigStore(str(tmp_path / "control.db"))
    apply(store, service("backend"))

    async def test(plane: ControlPlane) -> None:
        assert (await fetch_json(debug_port(plane), "/debug/status"))["store_version"] == 1
        first = plane.ads.version
        await asyncio.to_thread(apply, store, service("frontend"))
        for _ in range(200):
            got = await fetch_json(debug_port(plane), "/debug/status")
            if got["store_version"] == 2:
                break
            await asyncio.sleep(0.02)
        assert (got["store_version"], got["services"]) == (2, 2)
        assert got["config_version"] != first
        hostnames = {s["hostname"] for s in await fetch_json(debug_port(plane), "/debug/registryz")}
        assert "frontend.demo.svc.cluster.local" in hostnames
    with_plane(tmp_path, test, poll_interval=0.02)


def test_syncz_is_empty_without_proxies_and_unknown_paths_are_404(tmp_path: Path) -> None:
    async def test(plane: ControlPlane) -> None:
        assert await fetch_json(debug_port(plane), "/debug/syncz") == []
        assert await fetch_json(debug_port(plane), "/debug/registryz") == []
        status, _, body = await fetch(debug_port(plane), "/debug/nothing")
        assert status == 404
        assert "/debug/nothing" in body
        assert "/debug/syncz" in body
        status, _, _ = await fetch(debug_port(plane), "/ready?verbose=1")  # a query does not change the path
        assert status == 200
    with_plane(tmp_path, test)


def test_stop_closes_the_debug_port(tmp_path: Path) -> None:
    async def main() -> None:
        plane = ControlPlane(str(tmp_path / "control.db"), ads_address="127.0.0.1:0", debug_address="127.0.0.1:0")
        await plane.start()
        port = debug_port(plane)
        await plane.stop(0)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    asyncio.run(main())


# --- the CA's pod check -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.self_signed("cluster.local")


def test_the_ca_checks_pods_against_the_runtime(tmp_path: Path, ca: CertificateAuthority) -> None:
    runtime = PodStore(str(tmp_path / "runtime.db"))
    runtime.create("uid-1", runtime_pod("web-1", "web"), {"phase": "Running", "podIP": "10.213.0.4"})
    runtime.create("uid-2", runtime_pod("web-2", "web"), {"phase": "Running", "podIP": "10.213.0.5"})
    runtime.update("uid-2", deleting=True)
    service_ = CaService(ca, KEY)
    ControlPlane(str(tmp_path / "control.db"), str(tmp_path / "runtime.db"), ca=service_)
    check = service_.pod_check
    assert check is not None
    assert check("demo", "web-1", "uid-1") is True
    assert check("demo", "web-1", "uid-old") is False  # a token of an earlier pod of that name
    assert check("demo", "web-2", "uid-2") is False  # being deleted
    assert check("demo", "gone", "uid-3") is False
    assert check("other", "web-1", "uid-1") is False


def test_without_a_runtime_the_ca_keeps_no_pod_check(tmp_path: Path, ca: CertificateAuthority) -> None:
    service_ = CaService(ca, KEY)
    ControlPlane(str(tmp_path / "control.db"), ca=service_)
    assert service_.pod_check is None


def test_a_pod_check_given_to_the_ca_is_kept(tmp_path: Path, ca: CertificateAuthority) -> None:
    def mine(namespace: str, name: str, uid: str) -> bool:
        return True
    service_ = CaService(ca, KEY, pod_check=mine)
    ControlPlane(str(tmp_path / "control.db"), str(tmp_path / "runtime.db"), ca=service_)
    assert service_.pod_check is mine


def test_the_ca_serves_on_the_address_given(tmp_path: Path, ca: CertificateAuthority) -> None:
    async def test(plane: ControlPlane) -> None:
        assert plane.ca_address is not None
        host, _, port = plane.ca_address.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) > 0
        _, writer = await asyncio.open_connection(host, int(port))  # something listens there
        writer.close()
        await writer.wait_closed()
    with_plane(tmp_path, test, ca=CaService(ca, KEY), ca_address="127.0.0.1:0")
