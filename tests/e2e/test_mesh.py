"""The mesh end to end: real Envoy sidecars, real certificates, real DNS, real traffic between pods
(network namespaces on a bridge), everything brought up by ``weir up`` (see conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.netns.runtime_helpers import wait_for
from weir.install.embedded import restart, stop
from weir.install.procs import http_get, in_node
from weir.install.report import capabilities

from .conftest import Mesh

BACKEND = "backend.demo.svc.cluster.local"


def test_weir_up_reports_the_example_working(mesh: Mesh) -> None:
    checks = {c["name"]: c for c in mesh.report["checks"]}
    assert set(checks) == {"traffic", "envoy-both-sides", "mutual-tls-peers", "dns-proxy", "no-net-admin"}
    failed = [c for c in checks.values() if not c["ok"]]
    assert not failed, failed
    assert "20/20 requests answered" in checks["traffic"]["detail"]
    # both sides of every hop: the client's sidecar sent, the frontend's took in over TLS and sent on
    sidecars = mesh.report["sidecars"]
    assert sidecars["demo/client"]["outbound_requests"] >= 20
    assert sidecars["demo/frontend"]["inbound_requests"] >= 20
    assert sidecars["demo/frontend"]["inbound_tls_handshakes"] >= 1
    assert sidecars["demo/frontend"]["outbound_requests"] >= 20
    assert sidecars["demo/tcp-echo"]["inbound_connections"] >= 20
    peers = " ".join(mesh.report["peers"])
    assert "frontend (frontend) <- spiffe://cluster.local/ns/demo/sa/client" in peers
    assert "<- spiffe://cluster.local/ns/demo/sa/frontend" in peers
    for step in ("node agent: ready", "control plane: ready", "pod demo/frontend: ready", "the mesh is up"):
        assert step in mesh.up_output


def test_weir_status_shows_pods_proxies_and_versions(mesh: Mesh) -> None:
    out = mesh.weir("status", "-o", "json", check=True)
    doc = json.loads(out.stdout)
    assert doc["phase"] == "up"
    assert all(p["alive"] for p in doc["processes"].values())
    assert doc["control"]["last_error"] == ""
    pods = {f"{p['namespace']}/{p['name']}": p for p in doc["pods"]}
    assert pods["demo/frontend"]["ready"] == "2/2"
    assert pods["demo/frontend"]["phase"] == "Running"
    assert pods["outside/plain"]["ready"] == "1/1"
    names = {(p["namespace"], p["name"]) for p in doc["proxies"] if "LDS" in p["types"]}
    assert ("demo", "frontend") in names
    assert ("e2e", "mirrored") in names
    table = mesh.weir("status", check=True).stdout
    assert "PROXIES" in table
    assert "frontend.demo" in table


def test_a_plaintext_client_is_refused_by_a_strict_workload(mesh: Mesh) -> None:
    strict = mesh.pod_ip("demo", "backend-v1")  # namespace demo: PeerAuthentication STRICT
    permissive = mesh.pod_ip("e2e", "mirror-a")  # namespace e2e: PERMISSIVE (the default)
    refused = mesh.load("plain", f"http://{strict}:8080/", 3, namespace="outside")
    assert refused["ok"] == 0, refused
    assert refused["failed"] == 3, refused
    accepted = mesh.load("plain", f"http://{permissive}:8080/", 3, namespace="outside")
    assert accepted["ok"] == 3, accepted
    # the refused requests reached the sidecar (it is the one that refused), not the application
    assert "GET / host=" + strict not in mesh.pod_logs("demo", "backend-v1", "backend")


def test_a_weighted_split_holds_within_five_percent_over_1000_requests(mesh: Mesh) -> None:
    summary = mesh.load("client", "http://backend:8080/", 1000, concurrency=4)
    assert summary["ok"] == 1000, summary
    v1, v2 = summary["versions"].get("v1", 0), summary["versions"].get("v2", 0)
    assert v1 + v2 == 1000
    assert 750 <= v1 <= 850, f"80/20 split measured {v1}/{v2}"


def test_mirroring_reaches_both_destinations(mesh: Mesh) -> None:
    before = ("mirror-a", "mirror-b")
    summary = mesh.load("client", "http://mirrored.e2e:8080/mirror-check", 10)
    assert summary["ok"] == 10, summary
    assert summary["versions"] == {"v1": 10}, summary

    def seen() -> dict[str, int] | None:
        now = {m: mesh.pod_logs("e2e", m).count("GET /mirror-check host=mirrored") for m in before}
        return now if all(n >= 10 for n in now.values()) else None

    counts = wait_for("mirrored requests at both mirrors", seen, timeout=15)
    assert counts == {"mirror-a": 10, "mirror-b": 10}
    # the primary answered every request; the mirrors' answers were dropped
    assert mesh.pod_logs("e2e", "mirrored").count("GET /mirror-check") == 10


def _resolve(mesh: Mesh, name: str) -> list[str]:
    code, out = mesh.exec("client", "getent", "ahostsv4", name)
    assert code == 0, f"{name} did not resolve (exit {code})"
    return sorted({line.split()[0] for line in out.splitlines() if line.strip()})


def test_dns_answers_services_service_entries_and_external_names(mesh: Mesh) -> None:
    registry = {s["hostname"]: s for s in json.loads(_registry(mesh))}
    vip = registry[BACKEND]["vip"]
    assert _resolve(mesh, "backend") == [vip]  # the pod's own namespace, a short name
    assert _resolve(mesh, "backend.demo") == [vip]
    assert _resolve(mesh, BACKEND) == [vip]
    partner = registry["api.partner.test"]["vip"]
    assert partner.startswith("240.240."), partner  # auto-allocated, as Istio's DNS auto-allocation
    assert _resolve(mesh, "api.partner.test") == [partner]
    # ExternalName: a CNAME to the backend, followed to its VIP
    assert _resolve(mesh, "legacy.e2e.svc.cluster.local") == [vip]
    code, out = mesh.exec("client", "getent", "ahostsv4", "no-such-service.demo.svc.cluster.local")
    assert code != 0, out
    assert (mesh.agent_metric("demo", "client", "weir_agent_dns_requests_total") or 0) > 0


def _registry(mesh: Mesh) -> str:
    state = mesh.state
    got = in_node(state, lambda: http_get(f"{state.debug_url}/debug/registryz"))
    assert got is not None
    assert got[0] == 200
    return got[1]


def _serial(mesh: Mesh, namespace: str, name: str) -> str:
    certs = json.loads(mesh.admin(namespace, name, "/certs"))
    serials = [c["serial_number"] for entry in certs["certificates"] for c in entry.get("cert_chain", [])
               if any("spiffe://" in s.get("uri", "") for s in c.get("subject_alt_names", []))]
    assert serials, certs
    return str(serials[0])


def test_certificates_rotate_during_traffic_with_no_failed_request(mesh: Mesh) -> None:
    first = {pod: _serial(mesh, "demo", pod) for pod in ("client", "frontend", "backend-v1")}
    # 30 s certificates rotate every 15 s: 40 s of steady traffic crosses at least two rotations
    summary = mesh.load("client", "http://frontend:8080/", 200, interval=0.2)
    assert summary["failed"] == 0, summary
    assert summary["ok"] == 200, summary
    second = {pod: _serial(mesh, "demo", pod) for pod in first}
    assert all(first[p] != second[p] for p in first), (first, second)


def test_envoy_killed_is_restarted_by_the_agent(mesh: Mesh) -> None:
    [old] = mesh.envoy_pids("demo", "backend-v2")
    restarts = mesh.agent_metric("demo", "backend-v2", "weir_agent_envoy_restarts_total") or 0
    os.kill(old, signal.SIGKILL)
    new = wait_for("a new Envoy in backend-v2", lambda: [p for p in mesh.envoy_pids("demo", "backend-v2")
                                                          if p != old], timeout=30)
    assert len(new) == 1
    wait_for("the restart counted", lambda: (mesh.agent_metric("demo", "backend-v2",
                                                               "weir_agent_envoy_restarts_total") or 0) > restarts)
    # the new Envoy gets its config and certificate again and serves: both versions answer
    def both() -> dict[str, int] | None:
        summary = mesh.load("client", "http://backend:8080/", 60)
        versions = summary["versions"]
        return versions if summary["failed"] == 0 and versions.get("v2") else None
    wait_for("backend v2 answering again", both, timeout=30, interval=1)


def test_control_plane_restart_proxies_keep_serving_then_reconnect(mesh: Mesh) -> None:
    state = mesh.state
    before = {p["id"]: p["connected_at"] for p in mesh.syncz() if "LDS" in p["types"]}
    stop(state, "control")
    try:
        summary = mesh.load("client", "http://frontend:8080/", 20)
        assert summary["ok"] == 20, summary  # config and certificates held while the control plane is gone
    finally:
        restart(state, "control")

    def reconnected() -> list[dict[str, object]] | None:
        proxies = [p for p in mesh.syncz() if "LDS" in p["types"]]
        synced = [p for p in proxies if p["types"]["LDS"]["state"] == "SYNCED"]
        return synced if len(synced) >= len(before) else None
    proxies = wait_for("every proxy back and synced", reconnected, timeout=60, interval=1)
    assert {p["id"] for p in proxies} >= set(before)
    assert all(p["connected_at"] > before[p["id"]] for p in proxies if p["id"] in before)
    assert mesh.load("client", "http://frontend:8080/", 10)["ok"] == 10


def test_weir_apply_rejects_bad_resources_naming_the_field_and_storing_nothing(mesh: Mesh, tmp_path: Path) -> None:
    store = str(Path(mesh.root) / "var/lib/weir/control.db")
    good = ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ok-rule, namespace: e2e}\n"
            "spec: {host: mirrored}\n")
    bad = ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: bad, namespace: e2e}\n"
           "spec:\n  hosts: [mirrored]\n  http:\n  - route:\n    - destination: {host: mirrored}\n      weight: -5\n")
    manifest = tmp_path / "mixed.yaml"
    manifest.write_text(good + "---\n" + bad)
    version = mesh.weir("get", "vs", "-o", "json", "--store", store, check=True).stdout
    out = mesh.weir("apply", "-f", str(manifest), "--store", store)
    assert out.returncode == 2, out
    assert "spec.http[0].route[0].weight" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert mesh.weir("get", "dr", "ok-rule", "-n", "e2e", "--store", store).returncode == 1  # nothing stored
    assert mesh.weir("get", "vs", "-o", "json", "--store", store, check=True).stdout == version


def test_weir_up_refuses_a_second_mesh_and_bad_manifests_without_touching_anything(mesh: Mesh,
                                                                                     tmp_path: Path) -> None:
    again = mesh.weir("up", "--root", mesh.root, "--no-traffic")
    assert again.returncode == 1, again
    assert "already up" in again.stderr, again
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 99999}]}\n")
    other = tmp_path / "root"
    out = subprocess.run([sys.executable, "-m", "weir", "up", str(bad), "--root", str(other)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2, out.stderr
    assert "spec.ports[0].port" in out.stderr, out.stderr
    assert not other.exists()


def test_no_application_process_holds_net_admin_or_net_raw(mesh: Mesh) -> None:
    for record in mesh.runtime.pods():
        processes = capabilities(record.netns, record.shim_pid)
        assert processes, f"no container process found in {record.name}'s namespace"
        for proc in processes:
            assert not proc["net_admin"], (record.name, proc)
            assert not proc["net_raw"], (record.name, proc)
        manifest = json.dumps(record.manifest)
        assert "NET_ADMIN" not in manifest, record.name
        assert "NET_RAW" not in manifest, record.name
    assert "istio-validation" in json.dumps(mesh.runtime.get("demo", "frontend").manifest)


def test_a_pod_run_into_the_running_mesh_is_injected_and_joins_its_service(mesh: Mesh, tmp_path: Path) -> None:
    manifest = tmp_path / "late.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: e2e, labels: {app: mirror-a}}\n"
        "spec:\n  containers:\n  - name: app\n    command: [weir, example-app, http, --service, mirror-a, "
        "--version, late]\n    ports: [{containerPort: 8080}]\n    securityContext: {runAsUser: 1000}\n")
    out = mesh.weir("pod", "run", "-f", str(manifest), check=True)
    assert "sidecar injected" in out.stderr
    try:
        record = mesh.runtime.get("e2e", "late")
        assert any(c["name"] == "istio-proxy" for c in record.manifest["spec"]["initContainers"])

        def both() -> dict[str, int] | None:  # the new endpoint reaches every client's Envoy
            versions = mesh.load("client", "http://mirror-a.e2e:8080/", 40)["versions"]
            return versions if versions.get("late") and versions.get("v1") else None
        wait_for("the late pod answering for mirror-a", both, timeout=60, interval=1)
    finally:
        mesh.weir("pod", "rm", "-n", "e2e", "late", check=True)

    def gone() -> bool:  # and its removal too
        return mesh.load("client", "http://mirror-a.e2e:8080/", 20)["versions"] == {"v1": 20}
    wait_for("mirror-a without the late pod", gone, timeout=60, interval=1)
