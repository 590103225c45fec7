"""The sidecar agent as one process (pilot-agent): SDS, DNS proxy, status server and Envoy.

:func:`config_from` is the parse edge: flags, then Istio's environment names (``POD_NAME``,
``POD_NAMESPACE``, ``INSTANCE_IP``, ``SERVICE_ACCOUNT``, ``CA_ADDR``, ``SECRET_TTL``,
``PROXY_CONFIG``'s ``discoveryAddress`` ...), then, in weir's embedded runtime, defaults under the
pod's directory (``WEIR_POD_DIR``: token, trust bundle, scratch), into a frozen
:class:`ProxyConfig`; a bad value is a :class:`ConfigError` naming the setting.
:class:`ProxyAgent` composes the parts, in this order on :meth:`ProxyAgent.start`:

1. :class:`~weir.agent.secrets.WorkloadSecrets` for ``spiffe://<trust domain>/ns/<ns>/sa/<sa>``
   and :class:`~weir.agent.sds.SdsServer` on the SDS socket (owned by uid 1337 when root);
2. the DNS proxy on ``127.0.0.1:15053`` (UDP and TCP), answering mesh names from the tables the
   control plane pushes (:class:`~weir.agent.nds.NameTableClient`, the agent's own ADS stream)
   or from a JSON file (``--dns-table``), and forwarding the rest to resolv.conf's servers;
3. the status server (``:15020``: readiness, merged metrics);
4. Envoy's bootstrap, written world-readable into the config directory, and Envoy as uid 1337.

:meth:`ProxyAgent.stop` undoes it in reverse: Envoy drains (``POST /drain_listeners``) for the
drain duration and is stopped, then the status server, the name tables, the DNS proxy and SDS.

Certificates are signed through the ``sign`` callable the caller passes in (this package must
not know the CA): the CLI gives the CA client (:func:`weir.agent.caclient.grpc_signer`: TLS to
``CA_ADDR`` with the pod's token), or an in-process signer over a local ``cacerts`` directory.
"""

from __future__ import annotations

import asyncio  # noqa: TID251 (the agent's driver)
import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from weir.agent.bootstrap import (
    ADMIN_PORT,
    STATUS_PORT,
    Address,
    BootstrapError,
    BootstrapParams,
    TcpAddress,
    node_id,
    node_metadata,
    parse_address,
    render_bootstrap,
)
from weir.agent.dns.resolver import NameTable, Resolver
from weir.agent.dns.server import DEFAULT_PORT as DNS_PORT
from weir.agent.dns.server import DnsProxy, load_upstreams
from weir.agent.envoy import ENVOY_GID, ENVOY_UID, EnvoyProcess, find_envoy_binary
from weir.agent.nds import NameTableClient, Node
from weir.agent.sds import SdsServer
from weir.agent.secrets import Clock, Signer, WorkloadSecrets
from weir.agent.status import AgentMetrics, StatusServer
from weir.api.spiffe import SpiffeId, SpiffeIdError
from weir.platform.nds import AGENT_CLIENT, AGENT_CLIENT_KEY

log = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR: Final = Path("/etc/istio/proxy")
"""Where the bootstrap and Envoy's log go (Istio's ``ConfigPath``)."""
DEFAULT_SDS_SOCKET: Final = Path("/var/run/secrets/workload-spiffe-uds/socket")
DEFAULT_XDS_ADDRESS: Final = "istiod.istio-system.svc:15010"
DEFAULT_ROOT_CERT: Final = Path("/var/run/secrets/istio/root-cert.pem")
DEFAULT_TOKEN: Final = Path("/var/run/secrets/tokens/istio-token")
BOOTSTRAP_NAME: Final = "envoy-rev.json"
KILL_AFTER: Final = 5.0
"""Seconds Envoy may take to exit after SIGTERM, past the drain, before SIGKILL."""


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it (flag and environment name)."""


@dataclass(frozen=True)
class ProxyConfig:
    """One sidecar agent's settings, parsed. Environment names are Istio's where Istio has one."""

    pod_name: str
    namespace: str
    instance_ips: tuple[str, ...]
    service_account: str = "default"
    trust_domain: str = "cluster.local"
    xds_address: Address = field(default_factory=lambda: parse_address(DEFAULT_XDS_ADDRESS))
    ca_address: str = ""
    """The CA's gRPC address (Istio's ``CA_ADDR``, served over TLS): certificates are signed there."""
    ca_root_cert: Path = DEFAULT_ROOT_CERT
    """The trust bundle the CA's serving certificate is checked against."""
    token_file: Path = DEFAULT_TOKEN
    """The pod's service-account token, presented to the CA (read again on each request)."""
    cert_ttl: timedelta = timedelta(hours=24)
    """The workload certificate's lifetime (Istio's ``SECRET_TTL``); rotated at half of it."""
    ca_dir: Path | None = None
    """A ``cacerts`` directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) to sign with
    in-process instead of asking a CA (a standalone agent, tests)."""
    config_dir: Path = DEFAULT_CONFIG_DIR
    sds_socket: Path = DEFAULT_SDS_SOCKET
    dns_table: Path | None = None
    """A JSON name table for the DNS proxy; without one, tables come from the control plane (NDS)."""
    dns_address: TcpAddress = field(default_factory=lambda: TcpAddress("127.0.0.1", DNS_PORT))
    resolv_conf: Path = Path("/etc/resolv.conf")
    status_address: TcpAddress = field(default_factory=lambda: TcpAddress("127.0.0.1", STATUS_PORT))
    drain_duration: float = 5.0
    """Seconds Envoy drains on stop (Istio's ``TERMINATION_DRAIN_DURATION_SECONDS``)."""
    concurrency: int = 2
    log_level: str = "warning"

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.service_account)


# (setting, flag's dest, environment name). Flags win over the environment.
SETTINGS: Final = (
    ("pod_name", "pod_name", "POD_NAME"),
    ("namespace", "pod_namespace", "POD_NAMESPACE"),
    ("instance_ips", "instance_ip", "INSTANCE_IP"),
    ("service_account", "service_account", "SERVICE_ACCOUNT"),
    ("trust_domain", "trust_domain", "TRUST_DOMAIN"),
    ("xds_address", "xds_address", "XDS_ADDRESS"),
    ("ca_address", "ca_address", "CA_ADDR"),
    ("ca_root_cert", "ca_root_cert", "WEIR_CA_ROOT_CERT"),
    ("token_file", "token_file", "WEIR_TOKEN_FILE"),
    ("cert_ttl", "secret_ttl", "SECRET_TTL"),
    ("ca_dir", "ca_dir", "WEIR_CA_DIR"),
    ("config_dir", "config_dir", "WEIR_PROXY_CONFIG_DIR"),
    ("sds_socket", "sds_socket", "WEIR_SDS_SOCKET"),
    ("dns_table", "dns_table", "WEIR_DNS_TABLE"),
    ("dns_address", "dns_address", "WEIR_DNS_ADDRESS"),
    ("status_address", "status_address", "WEIR_STATUS_ADDRESS"),
    ("drain_duration", "drain_duration", "TERMINATION_DRAIN_DURATION_SECONDS"),
    ("concurrency", "concurrency", "WEIR_PROXY_CONCURRENCY"),
    ("log_level", "log_level", "WEIR_PROXY_LOG_LEVEL"),
)


def _tcp(value: str, what: str) -> TcpAddress:
    address = parse_address(value, what)
    if not isinstance(address, TcpAddress) or not address.is_ip:
        raise ConfigError(f"{what}: {value!r} must be ip:port")
    return address


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str) -> timedelta:
    """Go's duration syntax as Istio's settings use it: ``24h``, ``1h30m``, ``90s``, ``500ms``."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ConfigError(f"{what}: {text!r} is not a duration such as 24h, 90m or 30s")
    value = timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))
    if value < timedelta(seconds=10):
        raise ConfigError(f"{what}: {text!r} is shorter than 10s")
    return value


def _embedded_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """Defaults from the pod: ``PROXY_CONFIG``'s ``discoveryAddress`` (Istio's ProxyConfig), and in
    weir's embedded runtime the pod's directory (``WEIR_POD_DIR``: token, trust bundle, scratch)."""
    found: dict[str, str] = {}
    try:
        proxy_config = json.loads(env.get("PROXY_CONFIG") or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"PROXY_CONFIG: invalid JSON: {exc.msg}") from None
    if not isinstance(proxy_config, dict):
        raise ConfigError(f"PROXY_CONFIG: expected a JSON object (Istio's ProxyConfig), not {proxy_config!r}")
    discovery = proxy_config.get("discoveryAddress")
    if discovery is not None and not isinstance(discovery, str):
        raise ConfigError(f"PROXY_CONFIG: discoveryAddress must be a string (host:port), not {discovery!r}")
    if discovery:
        found["xds_address"] = discovery
    pod_dir = env.get("WEIR_POD_DIR")
    if pod_dir:
        base = Path(pod_dir)
        found.update(token_file=str(base / "token"), ca_root_cert=str(base / "root-cert.pem"),
                     config_dir=str(base / "run" / "proxy"), sds_socket=str(base / "run" / "sds"))
    return found


def config_from(flags: Mapping[str, Any], env: Mapping[str, str]) -> ProxyConfig:
    """Settings from flags (by dest) and the environment, validated."""
    raw: dict[str, str] = {}
    for key, dest, var in SETTINGS:
        value = flags.get(dest)
        if value is None:
            value = env.get(var)
        if value is not None and str(value) != "":
            raw[key] = str(value)
    names = {key: f"--{dest.replace('_', '-')} ({var})" for key, dest, var in SETTINGS}
    for key, value in _embedded_defaults(env).items():
        if key not in raw:
            raw[key] = value
            if key == "xds_address":  # a bad value is reported where it came from
                names[key] = "PROXY_CONFIG discoveryAddress"
    for key in ("pod_name", "namespace", "instance_ips"):
        if key not in raw:
            raise ConfigError(f"{names[key]}: required")
    values: dict[str, Any] = {}
    try:
        for key, text in raw.items():
            what = names[key]
            if key == "instance_ips":
                ips = tuple(ip.strip() for ip in text.split(",") if ip.strip())
                for ip in ips:
                    try:
                        ipaddress.ip_address(ip)
                    except ValueError:
                        raise ConfigError(f"{what}: {ip!r} is not an IP address") from None
                values[key] = ips
            elif key == "xds_address":
                values[key] = parse_address(text, what)
            elif key in ("dns_address", "status_address"):
                values[key] = _tcp(text, what)
            elif key in ("ca_dir", "config_dir", "sds_socket", "dns_table", "ca_root_cert", "token_file"):
                values[key] = Path(text).absolute()
            elif key == "cert_ttl":
                values[key] = parse_duration(text, what)
            elif key == "drain_duration":
                values[key] = float(text)
                if not 0 <= values[key] <= 3600:
                    raise ConfigError(f"{what}: {text!r} is not within 0..3600 seconds")
            elif key == "concurrency":
                values[key] = int(text)
                if not 0 < values[key] <= 256:
                    raise ConfigError(f"{what}: {text!r} is not within 1..256")
            else:
                values[key] = text
    except BootstrapError as exc:
        raise ConfigError(str(exc)) from None
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{what}: {text!r}: {exc}") from None
    config = ProxyConfig(**values)
    try:
        config.identity  # noqa: B018 (validates the trust domain, namespace and service account)
    except SpiffeIdError as exc:
        raise ConfigError(str(exc)) from None
    return config


def load_name_table(path: Path, namespace: str) -> NameTable:
    """A :class:`NameTable` from a JSON file: ``{"hosts": {...}, "aliases": {...}, "search_domains": [...]}``."""
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"DNS table {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"DNS table {path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(doc, dict) or set(doc) - {"hosts", "aliases", "search_domains", "cluster_domain"}:
        raise ConfigError(f"DNS table {path}: expected an object with hosts, aliases, search_domains, cluster_domain")
    try:
        return NameTable.parse(hosts=doc.get("hosts"), aliases=doc.get("aliases"), namespace=namespace,
                               search_domains=doc.get("search_domains", ()),
                               cluster_domain=doc.get("cluster_domain", "cluster.local"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"DNS table {path}: {exc}") from None


def search_domains(resolv_conf: Path) -> tuple[str, ...]:
    """The ``search`` list of resolv.conf (the last one wins, as in glibc); none when unreadable."""
    found: tuple[str, ...] = ()
    with contextlib.suppress(OSError):
        for line in resolv_conf.read_text().splitlines():
            words = line.split()
            if words and words[0] in ("search", "domain"):
                found = tuple(w.rstrip(".") for w in words[1:])
    return found


def bootstrap_params(config: ProxyConfig) -> BootstrapParams:
    return BootstrapParams(pod_name=config.pod_name, namespace=config.namespace, pod_ips=config.instance_ips,
                           service_account=config.service_account, xds_address=config.xds_address,
                           sds_path=str(config.sds_socket), status_address=config.status_address,
                           dns_domain="cluster.local")


def write_bootstrap(config: ProxyConfig) -> Path:
    """Write the bootstrap into the config directory (0755; file 0644, atomically) and return its path."""
    config.config_dir.mkdir(parents=True, exist_ok=True)
    config.config_dir.chmod(0o755)
    path = config.config_dir / BOOTSTRAP_NAME
    scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        scratch.write_text(json.dumps(render_bootstrap(bootstrap_params(config)), indent=2) + "\n")
        scratch.chmod(0o644)
        scratch.replace(path)
    finally:
        scratch.unlink(missing_ok=True)
    return path


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ProxyAgent:
    """One sidecar's agent; :meth:`start` brings the parts up in order, :meth:`stop` takes them down."""

    def __init__(self, config: ProxyConfig, sign: Signer, *, clock: Clock = _utc_now,
                 envoy_binary: Path | None = None) -> None:
        self.config = config
        self.secrets = WorkloadSecrets(config.identity, sign, clock)
        owner = (ENVOY_UID, ENVOY_GID) if os.geteuid() == 0 else None
        self.sds = SdsServer(self.secrets, config.sds_socket, owner=owner)
        table = (load_name_table(config.dns_table, config.namespace) if config.dns_table is not None
                 else NameTable.parse(namespace=config.namespace))
        self.dns = DnsProxy(Resolver(table, clock=time.monotonic),
                            load_upstreams(config.resolv_conf) if config.resolv_conf.exists() else (),
                            host=config.dns_address.host, port=config.dns_address.port)
        self.envoy = EnvoyProcess(envoy_binary or find_envoy_binary(), config.config_dir / BOOTSTRAP_NAME,
                                  concurrency=config.concurrency, log_level=config.log_level,
                                  drain_time=config.drain_duration, cwd=config.config_dir,
                                  admin=TcpAddress("127.0.0.1", ADMIN_PORT))
        self.nds: NameTableClient | None = None
        if config.dns_table is None:
            params = bootstrap_params(config)
            self.nds = NameTableClient(
                config.xds_address,
                Node(node_id(params), {**node_metadata(params), AGENT_CLIENT_KEY: AGENT_CLIENT}),
                self.dns.resolver.update, namespace=config.namespace,
                search_domains=search_domains(config.resolv_conf))
        self.metrics = AgentMetrics(envoy_restarts=lambda: self.envoy.restarts, cert_expiry=self._cert_expiry,
                                    dns_requests=lambda: self.dns.stats.received)
        self.status = StatusServer(self.envoy.admin, self.metrics, lambda: self.secrets.current is not None,
                                   host=config.status_address.host, port=config.status_address.port)
        self._stack: contextlib.AsyncExitStack | None = None

    def _cert_expiry(self) -> float | None:
        current = self.secrets.current
        return None if current is None else current.not_after.timestamp()

    async def start(self) -> None:
        """SDS, DNS proxy, status server, then Envoy; on a failure, what started is stopped again."""
        if self._stack is not None:
            raise RuntimeError("the agent was already started")
        async with contextlib.AsyncExitStack() as stack:
            await self.sds.start()
            stack.push_async_callback(self.sds.stop)
            await self.dns.start()
            stack.push_async_callback(self.dns.stop, 1.0)
            if self.nds is not None:
                await self.nds.start()
                stack.push_async_callback(self.nds.stop)
            await self.status.start()
            stack.push_async_callback(self.status.stop)
            await asyncio.to_thread(write_bootstrap, self.config)
            await asyncio.to_thread(self.envoy.start)
            stack.push_async_callback(asyncio.to_thread, self.envoy.drain_and_stop, self.config.drain_duration,
                                      KILL_AFTER)
            self._stack = stack.pop_all()
        log.info("sidecar agent up: %s, Envoy pid %s", self.config.identity, self.envoy.pid)

    async def stop(self) -> None:
        """Envoy drains and stops (within the drain duration, plus SIGTERM's wait), then the rest."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
            log.info("sidecar agent stopped")


async def serve(config: ProxyConfig, sign: Signer, *, stop: asyncio.Event | None = None) -> None:
    """Run the agent until SIGTERM/SIGINT (or ``stop``), then stop it in order."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = ProxyAgent(config, sign)
    await agent.start()
    try:
        await stop.wait()
    finally:
        await agent.stop()
