"""The data-plane benchmark's lab: one weir mesh (``weir up`` in a node network namespace of its
own) holding the three paths that are compared, on one bridge, with one load generator.

- ``bench-mesh`` (injected, PeerAuthentication STRICT): ``server`` (nginx) behind the Service
  ``server``, and ``client``; both get weir's sidecar (Envoy + ``weir proxy-agent``) and weir-cni
  captures them, so a request from ``client`` to ``server.bench-mesh.svc.cluster.local:8080`` goes
  client -> Envoy -> mTLS -> Envoy -> nginx.
- ``bench-plain`` (no injection): ``server`` runs the same nginx and an HAProxy that terminates
  TLS (client certificates required) on :8443 in front of it; ``client`` runs an HAProxy on
  127.0.0.1:15080 that originates that TLS. Direct: client -> nginx :8080. HAProxy pair:
  client -> HAProxy -> TLS -> HAProxy -> nginx.

nginx answers every request with the same 1,024-byte body (HTTP/1.1 keep-alive, no access
log); the load is 1,024-byte POSTs. Envoy runs with 2 workers (weir's default, as Istio's
sidecar), HAProxy with 2 threads, nginx with 2 workers. The plain client pod is started after
``weir up`` (through the runtime, like any pod) because its HAProxy needs the plain server's
address. Everything — the node namespace, the mesh root, certificates, configs, logs — lives
in a temporary directory and namespaces with unique names; ``weir down`` and the removal of
those run when the lab closes, on success, failure, Ctrl-C or SIGTERM (and a second one while
that cleanup runs waits until it is done).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from dataplane_load import Proc
from lab import sh

from weir.install.procs import http_get
from weir.netns import NetNS, run_in
from weir.runtime.node import load_node
from weir.runtime.pods import Runtime
from weir.runtime.shim import processes_in

MESH_NS = "bench-mesh"
PLAIN_NS = "bench-plain"
APP_PORT = 8080
TLS_PORT = 8443
LOCAL_PORT = 15080  # the client-side HAProxy, on the plain client's loopback
APP_UID = 1000
PAYLOAD_BYTES = 1024
WORKERS = 2  # Envoy --concurrency (weir's default), HAProxy nbthread, nginx worker_processes
UP_TIMEOUT = 240.0
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Route:
    """One compared path: where the load generator runs and what it asks for."""

    key: str
    label: str
    namespace: str
    client: str
    url: str


# ---- files ---------------------------------------------------------------------------------------


def nginx_conf(run_dir: Path, body: str) -> str:
    return f"""worker_processes {WORKERS};
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {run_dir}/body;
  proxy_temp_path {run_dir}/proxy;
  fastcgi_temp_path {run_dir}/fastcgi;
  uwsgi_temp_path {run_dir}/uwsgi;
  scgi_temp_path {run_dir}/scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  default_type text/plain;
  server {{
    listen {APP_PORT};
    location / {{ return 200 "{body}"; }}
  }}
}}
"""


_HAPROXY_COMMON = f"""global
  nbthread {WORKERS}
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 300s
  timeout server 300s
"""


def haproxy_server_cfg(files: Path) -> str:
    return _HAPROXY_COMMON + f"""frontend tls_in
  bind :{TLS_PORT} ssl crt {files}/server.pem ca-file {files}/ca.pem verify required
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:{APP_PORT}
"""


def haproxy_client_cfg(files: Path, server_ip: str) -> str:
    return _HAPROXY_COMMON + f"""frontend plain_out
  bind 127.0.0.1:{LOCAL_PORT}
  default_backend tls_out
backend tls_out
  http-reuse always
  server server {server_ip}:{TLS_PORT} ssl crt {files}/client.pem ca-file {files}/ca.pem verify required \
verifyhost server.bench sni str(server.bench)
"""


def write_tls(files: Path) -> None:
    """A throw-away CA and two ECDSA P-256 leaves (the key type of weir's workload certificates):
    ``server.pem`` and ``client.pem`` (certificate + key, as HAProxy reads them) and ``ca.pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey,
             leaf: x509.ObjectIdentifier | None) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=leaf is None, path_length=None), critical=True))
        if leaf is not None:
            builder = (builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([leaf]), critical=False))
        return builder.sign(signer, hashes.SHA256())

    def pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weir data-plane bench CA")])
    ca = cert("weir data-plane bench CA", ca_key, ca_name, ca_key, None)
    _private(files / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for name, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = cert(f"{name}.bench", key, ca_name, ca_key, usage)
        _private(files / f"{name}.pem", leaf.public_bytes(serialization.Encoding.PEM) + pem(key))


def _private(path: Path, data: bytes) -> None:
    """A file only the apps' uid reads (the HAProxies and nginx run as it)."""
    path.write_bytes(data)
    os.chown(path, APP_UID, APP_UID)
    path.chmod(0o600)


def _container(name: str, command: list[str], port: int | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "command": command,
                         "securityContext": {"runAsUser": APP_UID, "runAsGroup": APP_UID}}
    if port is not None:
        c["ports"] = [{"containerPort": port}]
    return c


def _pod(namespace: str, name: str, containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"containers": containers}}


def manifests(files: Path) -> list[dict[str, Any]]:
    """What ``weir up`` gets: the namespaces, STRICT mTLS, the Service and three pods (the plain
    client comes later, see :func:`plain_client`)."""
    def nginx(pod: str) -> dict[str, Any]:
        return _container("nginx", ["nginx", "-e", "stderr", "-c", str(files / "nginx.conf"), "-g",
                                    f"daemon off; pid {files}/run/{pod}.pid;"], APP_PORT)

    return [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": MESH_NS, "labels": {"istio-injection": "enabled"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PLAIN_NS}},
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default", "namespace": MESH_NS}, "spec": {"mtls": {"mode": "STRICT"}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "server", "namespace": MESH_NS},
         "spec": {"selector": {"app": "server"}, "ports": [{"name": "http", "port": APP_PORT}]}},
        _pod(MESH_NS, "server", [nginx("mesh-server")]),
        _pod(MESH_NS, "client", [_container("client", ["sleep", "infinity"])]),
        _pod(PLAIN_NS, "server", [nginx("plain-server"), _container(
            "haproxy", ["haproxy", "-db", "-f", str(files / "haproxy-server.cfg")], TLS_PORT)]),
    ]


def plain_client(files: Path) -> dict[str, Any]:
    return _pod(PLAIN_NS, "client", [_container(
        "haproxy", ["haproxy", "-db", "-f", str(files / "haproxy-client.cfg")])])


def write_files(files: Path) -> None:
    run = files / "run"
    out = files / "out"
    for d in (run, out):
        d.mkdir()
        os.chown(d, APP_UID, APP_UID)
    # a 1 KB body nginx can hold in its config: printable, no quotes or backslashes
    body = (secrets.token_hex(PAYLOAD_BYTES // 2))[:PAYLOAD_BYTES]
    (files / "nginx.conf").write_text(nginx_conf(run, body))
    (files / "payload").write_bytes(os.urandom(PAYLOAD_BYTES))
    (files / "haproxy-server.cfg").write_text(haproxy_server_cfg(files))
    write_tls(files)
    text = yaml.safe_dump_all(manifests(files), sort_keys=False)
    (files / "manifests").mkdir()
    (files / "manifests" / "dataplane.yaml").write_text(text)


# ---- the lab -------------------------------------------------------------------------------------


def _weir(*args: str, timeout: float, own_session: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weir", *args], capture_output=True, text=True, check=False,
                          timeout=timeout, start_new_session=own_session)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Cleanup that a second Ctrl-C or SIGTERM must not cut short: the signals are held until the
    block ends, then raised as KeyboardInterrupt. (Handlers that are Python functions are not
    inherited by the commands the block runs.)"""
    got: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if got:
        raise KeyboardInterrupt(f"signal {got[0]} during cleanup")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@dataclass
class Lab:
    tag: str
    tmp: Path
    files: Path
    root: str
    node_name: str
    up_seconds: float = 0.0

    @property
    def node_netns(self) -> str:
        return f"/var/run/netns/{self.node_name}"

    # -- lifecycle --

    @classmethod
    @contextlib.contextmanager
    def open(cls, say: Any) -> Iterator[Lab]:
        """The mesh with all three paths (their pods up and listening); removed on exit, whatever happens."""
        tag = secrets.token_hex(3)
        tmp = Path(tempfile.mkdtemp(prefix=f"weir-bench-dp-{tag}-"))
        tmp.chmod(0o755)  # the apps (uid 1000) and the sidecars (uid 1337) read their files here
        lab = cls(tag, tmp, tmp / "files", str(tmp / "root"), f"wdn{tag}")
        made_netns = False
        try:
            lab.files.mkdir(mode=0o755)
            Path(lab.root).mkdir(mode=0o755)
            write_files(lab.files)
            sh("ip", "netns", "add", lab.node_name)
            made_netns = True
            sh("ip", "-n", lab.node_name, "link", "set", "lo", "up")
            lab.up(say)
            yield lab
        finally:
            with held_signals():
                if made_netns:
                    lab.down(say)
                    sh("ip", "netns", "del", lab.node_name, check=False)
                shutil.rmtree(tmp, ignore_errors=True)

    def up(self, say: Any) -> None:
        octet = 200 + int(self.tag[:2], 16) % 50
        started = time.monotonic()
        say(f"weir up: {MESH_NS} (injected, STRICT mTLS) and {PLAIN_NS} in node netns {self.node_name}")
        out = _weir("up", str(self.files / "manifests"), "--root", self.root, "--node-netns", self.node_netns,
                    "--bridge", f"wdb{self.tag}", "--subnet", f"10.{octet}.0.0/16", "--no-traffic",
                    "--timeout", "120", timeout=UP_TIMEOUT)
        if out.returncode != 0:
            raise RuntimeError(f"weir up failed (exit {out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        server_ip = str(self.runtime.get(PLAIN_NS, "server").status["podIP"])
        (self.files / "haproxy-client.cfg").write_text(haproxy_client_cfg(self.files, server_ip))
        self.runtime.run(plain_client(self.files), f"pod {PLAIN_NS}/client")
        self._wait_listening(PLAIN_NS, "client", "127.0.0.1", LOCAL_PORT)
        self._wait_listening(PLAIN_NS, "server", "127.0.0.1", TLS_PORT)
        self.up_seconds = time.monotonic() - started
        say(f"mesh up in {self.up_seconds:.1f}s")

    def down(self, say: Any) -> None:
        out = _weir("down", "--root", self.root, timeout=UP_TIMEOUT, own_session=True)  # out of Ctrl-C's reach
        if out.returncode != 0:
            say(f"weir down failed (exit {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")

    @property
    def runtime(self) -> Runtime:
        return Runtime(load_node(self.root))

    def netns(self, namespace: str, pod: str) -> NetNS:
        return NetNS(self.runtime.get(namespace, pod).netns)

    def _wait_listening(self, namespace: str, pod: str, host: str, port: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            record = self.runtime.get(namespace, pod)
            if record.phase in ("Failed", "Succeeded"):
                raise RuntimeError(f"pod {namespace}/{pod} ended ({record.phase}); its log: "
                                   f"{self.runtime.log_path(record, None)}")

            def connect() -> bool:
                with socket.socket() as s:
                    s.settimeout(1)
                    return s.connect_ex((host, port)) == 0

            if record.netns and run_in(NetNS(record.netns), connect):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} in pod {namespace}/{pod} after "
                                   f"{READY_TIMEOUT:g}s")
            time.sleep(0.2)

    # -- the paths --

    def routes(self) -> list[Route]:
        plain_ip = str(self.runtime.get(PLAIN_NS, "server").status["podIP"])
        return [
            Route("direct", "direct (no mesh)", PLAIN_NS, "client", f"http://{plain_ip}:{APP_PORT}/"),
            Route("weir", "weir sidecars (mTLS)", MESH_NS, "client",
                  f"http://server.{MESH_NS}.svc.cluster.local:{APP_PORT}/"),
            Route("haproxy", "HAProxy pair (TLS)", PLAIN_NS, "client", f"http://127.0.0.1:{LOCAL_PORT}/"),
        ]

    def exec(self, route: Route, argv: list[str], timeout: float) -> str:
        """Run ``argv`` in the route's client pod as its app (uid 1000), as ``weir pod exec``;
        its standard output, or RuntimeError with it when it fails."""
        result = self.runtime.exec(route.namespace, route.client, None, argv, capture=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} in {route.namespace}/{route.client} exited {result.returncode}:\n"
                               f"{result.stdout[-2000:]}")
        return result.stdout

    def check(self, route: Route) -> None:
        """One POST through the path answers 200 with the 1 KB body (retried while the path warms up)."""
        argv = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "--max-time", "5",
                "--data-binary", f"@{self.payload}", route.url]
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            result = self.runtime.exec(route.namespace, route.client, None, argv, capture=True, timeout=30)
            if result.returncode == 0 and result.stdout.strip() == f"200 {PAYLOAD_BYTES}":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{route.label}: {route.url} from {route.namespace}/{route.client} answered "
                                   f"{result.stdout.strip()!r} (exit {result.returncode}), not 200 with "
                                   f"{PAYLOAD_BYTES} bytes")
            time.sleep(0.5)

    @property
    def payload(self) -> str:
        return str(self.files / "payload")

    def log_path(self, name: str) -> Path:
        """A file the load generator (uid 1000) may write, removed first."""
        path = self.files / "out" / name
        path.unlink(missing_ok=True)
        return path

    # -- the processes --

    def _find(self, namespace: str, pod: str) -> list[tuple[int, str, bytes]]:
        return [(pid, _comm(pid), _cmdline(pid)) for pid in processes_in(self.netns(namespace, pod))]

    def proxies(self, route: Route) -> dict[str, list[Proc]]:
        """The proxy processes of each side of ``route`` (none for direct): weir's sidecar is
        Envoy and the agent (``weir proxy-agent``); HAProxy is one process with threads."""
        if route.key == "direct":
            return {}
        namespace = MESH_NS if route.key == "weir" else PLAIN_NS
        out: dict[str, list[Proc]] = {}
        for side in ("client", "server"):
            found = self._find(namespace, side)
            if route.key == "weir":
                procs = [Proc(pid, "envoy") for pid, comm, _ in found if comm == "envoy"]
                procs += [Proc(pid, "agent") for pid, comm, cmd in found
                          if comm != "envoy" and b"proxy-agent" in cmd]
                wanted = {"envoy", "agent"}
            else:
                procs = [Proc(pid, "haproxy") for pid, comm, _ in found if comm == "haproxy"]
                wanted = {"haproxy"}
            roles = [p.role for p in procs]
            if set(roles) != wanted or len(roles) != len(wanted):
                raise RuntimeError(f"{namespace}/{side}: expected one each of {sorted(wanted)}, found {roles}")
            out[side] = procs
        return out

    def apps(self, route: Route) -> list[Proc]:
        """nginx (master and workers) behind ``route``."""
        namespace = MESH_NS if route.key == "weir" else PLAIN_NS
        return [Proc(pid, "nginx") for pid, comm, _ in self._find(namespace, "server") if comm == "nginx"]

    def mtls_evidence(self) -> dict[str, int]:
        """Envoy's own counters: TLS handshakes of the client's outbound cluster to the server and
        of the server's inbound listener. With STRICT mode, plaintext would have been refused."""
        def handshakes(pod: str, must_hold: str) -> int:
            got = run_in(self.netns(MESH_NS, pod), lambda: http_get("http://127.0.0.1:15000/stats?filter=ssl.handshake"))
            if got is None or got[0] != 200:
                raise RuntimeError(f"Envoy admin in {MESH_NS}/{pod}: {got}")
            total = 0
            for line in got[1].splitlines():
                name, _, value = line.partition(": ")
                if name.endswith("ssl.handshake") and must_hold in name:
                    total += int(value)
            return total

        evidence = {"client_outbound_tls_handshakes": handshakes("client", f"||server.{MESH_NS}."),
                    "server_inbound_tls_handshakes": handshakes("server", "listener.")}
        if not all(evidence.values()):
            raise RuntimeError(f"no mTLS between the weir sidecars: {evidence}")
        return evidence
