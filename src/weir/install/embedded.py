"""The embedded mesh on one machine: what ``weir up``, ``weir status`` and ``weir down`` do.

``up`` builds the whole mesh from manifests, in this order, saying what it does as it goes:

1. the node (``weir node init``): the CNI chain (bridge + host-local + portmap, weir-cni chained)
   in weir's own directories, the pod bridge with its gateway address, the mesh CA (self-signed,
   or a plugged-in ``cacerts`` directory) and the key pods' service-account tokens are signed with;
2. the node agent (``weir node-agent run``), which installs and guards weir-cni; ``up`` waits for
   its ``/readyz``;
3. the control plane (``weir control run``): ADS on the gateway's ``:15010``, the CA over TLS on
   ``:15012``, debug on ``127.0.0.1:15014``; ``up`` waits for ``/ready``;
4. the config (every resource but Pods) into the control plane's store, in one transaction;
5. the pods, injected by Istio's rules (the namespace's ``istio-injection`` label, the pod's
   ``sidecar.istio.io/inject``), each run by the embedded runtime: weir-cni captures the injected
   ones, the validation init container proves it, the sidecar agent gets its certificate from the
   CA and its config over ADS; ``up`` waits until every pod is Ready and every proxy ACKed.

What ``up`` made is recorded in ``<root>/var/lib/weir/mesh/up.json`` (processes, the bridge, the
directories it created); ``down`` removes every pod (their netns, rules and processes go with
them), stops the daemons, deletes the bridge and removes those directories. If ``up`` fails,
it runs ``down`` itself, unless asked to keep the mesh for inspection.

Daemons run in the node's network namespace when the node has one (tests), via ``nsenter``.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from weir.agent.envoy import find_envoy_binary
from weir.api.load import Resource
from weir.control.ca import CacertsError, CertificateAuthority
from weir.control.inject import InjectError, InjectResult, InjectValues, MeshInfo, inject
from weir.control.store import ConfigStore, StoreError
from weir.install.procs import (
    ProcError,
    http_get,
    in_node,
    ip,
    read_sysctl,
    start_daemon,
    stop_pid,
    wait_until,
    write_sysctl,
)
from weir.pki import tokens
from weir.runtime.node import NodeConfig, NodeError, init_node, load_node
from weir.runtime.pods import PodError, Runtime

Progress = Callable[[str], None]

STATE_FILE = "var/lib/weir/mesh/up.json"
ADS_PORT = 15010
CA_PORT = 15012
DEBUG_PORT = 15014
AGENT_READY_PORT = 8000
AGENT_METRICS_PORT = 15015
DNS_CAPTURE = "ISTIO_META_DNS_CAPTURE"
_SYSCTLS = ("net/ipv4/ip_forward",)
_OWNED_DIRS = ("etc/weir", "var/lib/weir", "var/log/weir", "var/run/weir-cni")


class UpError(Exception):
    """The mesh could not be brought up, inspected or taken down; the message says why."""


@dataclass(frozen=True)
class UpConfig:
    root: str = "/"
    bridge: str = "weir0"
    subnet: str = "10.213.0.0/16"
    node_netns: str = ""
    """Run the node (bridge, daemons) in this network namespace instead of the host's."""
    cacerts: str | None = None
    """A plugged-in CA (``cacerts`` directory); default: a self-signed root made for this mesh."""
    trust_domain: str = "cluster.local"
    timeout: float = 180.0
    """Seconds to wait for each daemon and for every pod to be ready."""
    backoff: float = 1.0
    """The runtime's first crash-loop back-off, in seconds."""
    keep_on_failure: bool = False
    workload_cert_ttl: str = ""
    """The sidecars' certificate lifetime (Istio's ``SECRET_TTL`` proxy metadata, e.g. ``24h``);
    empty: the agent's default (24h). They rotate at half of it."""


@dataclass
class State:
    """What ``up`` made, as recorded for ``status`` and ``down``."""

    root: str
    node_netns: str = ""
    gateway: str = ""
    bridge: str = ""
    bridge_created: bool = False
    processes: dict[str, int] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    """How each daemon was started, so it can be started again (:func:`restart`)."""
    trust_domain: str = "cluster.local"
    workload_cert_ttl: str = ""
    created_dirs: list[str] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    """Kernel settings as they were before ``up`` (the bridge plugin turns IP forwarding on)."""
    phase: str = "starting"

    @property
    def path(self) -> str:
        return os.path.join(self.root, STATE_FILE)

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        scratch = f"{self.path}.{os.getpid()}.tmp"
        with open(scratch, "w") as f:
            json.dump(self.__dict__, f, indent=2, sort_keys=True)
        os.replace(scratch, self.path)

    @classmethod
    def load(cls, root: str) -> State | None:
        path = os.path.join(root, STATE_FILE)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UpError(f"{path}: unreadable mesh state: {exc}") from None
        try:
            return cls(**data)
        except TypeError as exc:
            raise UpError(f"{path}: {exc}") from None

    # --- addresses ------------------------------------------------------------------------

    @property
    def ads_address(self) -> str:
        return f"{self.gateway}:{ADS_PORT}"

    @property
    def ca_address(self) -> str:
        return f"{self.gateway}:{CA_PORT}"

    @property
    def debug_url(self) -> str:
        return f"http://127.0.0.1:{DEBUG_PORT}"


# --- small drivers -------------------------------------------------------------------------


# --- up ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The manifests, split: config for the store, and pods for the runtime (in file order)."""

    config: tuple[Resource, ...]
    pods: tuple[Resource, ...]
    namespace_labels: Mapping[str, Mapping[str, str]]

    @classmethod
    def of(cls, resources: Sequence[Resource]) -> Plan:
        pods = tuple(r for r in resources if r.kind == "Pod")
        config = tuple(r for r in resources if r.kind != "Pod")
        labels = {r.metadata.name: dict(r.metadata.labels) for r in resources if r.kind == "Namespace"}
        names = [f"{p.metadata.namespace}/{p.metadata.name}" for p in pods]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UpError(f"pod {twice[0]} is defined more than once")
        return cls(config, pods, labels)


def _missing_dirs(root: str) -> list[str]:
    """The top-most directories under ``root`` that ``up`` will create (``etc`` when even that is missing)."""
    found: list[str] = []
    for directory in _OWNED_DIRS:
        parts = directory.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if not os.path.exists(os.path.join(root, prefix)):
                if prefix not in found:
                    found.append(prefix)
                break
    return found


def preflight(config: UpConfig) -> None:
    """What must be true before anything is touched: root, tools, Envoy, no mesh already up."""
    if os.geteuid() != 0:
        raise UpError("weir up needs root (it creates network namespaces, a bridge and capture rules)")
    for tool in ("ip", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            raise UpError(f"{tool} is not installed (Debian: iproute2 / util-linux); run scripts/setup.sh")
    if not os.path.exists("/usr/lib/cni/bridge"):
        raise UpError("the reference CNI plugins are missing (/usr/lib/cni/bridge): "
                      "apt-get install containernetworking-plugins")
    try:
        find_envoy_binary()
    except Exception as exc:
        raise UpError(f"Envoy: {exc}") from None
    existing = State.load(config.root)
    if existing is not None:
        raise UpError(f"a mesh is already up on this node ({existing.path}): `weir down` first, "
                      "or `weir apply -f` to change its config")


def up(config: UpConfig, resources: Sequence[Resource], progress: Progress) -> State:
    """Bring the mesh up (see the module docstring); on failure, take down what was made."""
    plan = Plan.of(resources)
    preflight(config)
    network = ipaddress.ip_network(config.subnet, strict=False)
    state = State(root=config.root, node_netns=config.node_netns, gateway=str(network[1]), bridge=config.bridge,
                  trust_domain=config.trust_domain, workload_cert_ttl=config.workload_cert_ttl)
    state.created_dirs = _missing_dirs(config.root)
    state.sysctls = {key: in_node(state, functools.partial(read_sysctl, key)) for key in _SYSCTLS}
    state.save()
    try:
        node = _node(config, state, progress)
        _node_agent(config, state, node, progress)
        _control_plane(config, state, node, progress)
        _apply(plan, node, progress)
        _pods(config, plan, state, node, progress)
        wait_ready(state, node, plan, config.timeout, progress)
    except BaseException as exc:
        if config.keep_on_failure:
            state.phase = "failed"
            state.save()
            progress("weir up failed; the mesh is kept for inspection (`weir status`, `weir pod logs`); "
                     "`weir down` removes it")
        else:
            known = isinstance(exc, UpError | PodError | ProcError)
            progress(f"weir up failed ({exc if known else type(exc).__name__}); removing what it made")
            with contextlib.suppress(Exception):
                down(config.root, lambda _: None)
        raise
    state.phase = "up"
    state.save()
    return state


def _node(config: UpConfig, state: State, progress: Progress) -> NodeConfig:
    progress(f"node: CNI chain bridge {config.bridge} ({config.subnet}) + weir-cni in {config.root}")
    ca_dir = os.path.join(config.root, "etc", "weir", "ca")
    try:
        if config.cacerts:
            ca = CertificateAuthority.from_cacerts(config.cacerts, trust_domain=config.trust_domain)
            source = f"plugged-in CA from {config.cacerts}"
        else:
            ca = CertificateAuthority.self_signed(config.trust_domain)
            source = f"self-signed root for trust domain {config.trust_domain}"
        ca.save(ca_dir)
    except (CacertsError, ValueError) as exc:
        raise UpError(f"CA: {exc}") from None
    progress(f"CA: {source} ({ca_dir})")
    key_path = os.path.join(config.root, "etc", "weir", "token.key")
    tokens.save_key(key_path, tokens.new_key())
    node = NodeConfig(root=config.root, bridge=config.bridge, subnet=config.subnet, node_netns=config.node_netns,
                      backoff_seconds=config.backoff, token_key=key_path,
                      ca_root_cert=os.path.join(ca_dir, "root-cert.pem"))
    try:
        init_node(node)
    except NodeError as exc:
        raise UpError(str(exc)) from None
    if ip(node, "link", "show", config.bridge, check=False).returncode != 0:
        ip(node, "link", "add", config.bridge, "type", "bridge")
        state.bridge_created = True
        state.save()
    prefix = ipaddress.ip_network(config.subnet, strict=False).prefixlen
    ip(node, "addr", "replace", f"{state.gateway}/{prefix}", "dev", config.bridge)
    ip(node, "link", "set", config.bridge, "up")
    return node


def _weir(*args: str) -> list[str]:
    return [sys.executable, "-m", "weir", *args]


def _node_agent(config: UpConfig, state: State, node: NodeConfig, progress: Progress) -> None:
    argv = _weir("node-agent", "run", "--node-root", config.root, "--listen-address", "127.0.0.1",
                 "--readiness-port", str(AGENT_READY_PORT), "--monitoring-port", str(AGENT_METRICS_PORT),
                 "--log-format", "json")
    pid, log = start(state, "node-agent", argv)
    progress(f"node agent: started (pid {pid}), installing weir-cni")
    url = f"http://127.0.0.1:{AGENT_READY_PORT}/readyz"
    wait_until("node agent", lambda: (in_node(state, lambda: http_get(url)) or (0, ""))[0] == 200, config.timeout,
          pid, log)
    progress("node agent: ready (weir-cni installed and serving)")


def _control_plane(config: UpConfig, state: State, node: NodeConfig, progress: Progress) -> None:
    store = os.path.join(config.root, "var", "lib", "weir", "control.db")
    argv = _weir("control", "run", "--store", store, "--runtime-db", node.db, "--ads-address", state.ads_address,
                 "--ca-address", state.ca_address, "--ca-dir", os.path.join(config.root, "etc", "weir", "ca"),
                 "--token-key", node.token_key, "--trust-domain", config.trust_domain,
                 "--debug-address", f"127.0.0.1:{DEBUG_PORT}", "--log-format", "json")
    pid, _ = start(state, "control", argv)
    progress(f"control plane: started (pid {pid}): ADS {state.ads_address}, CA {state.ca_address} (TLS)")
    wait_control(state, config.timeout)
    progress("control plane: ready")


def start(state: State, name: str, argv: list[str]) -> tuple[int, str]:
    """Start the daemon ``name`` (in the node's namespace) and record it; returns (pid, log path)."""
    log = os.path.join(state.root, "var", "log", "weir", f"{name}.log")
    pid = start_daemon(argv, log, state.node_netns)
    state.processes[name] = pid
    state.commands[name] = list(argv)
    state.save()
    return pid, log


def wait_control(state: State, timeout: float) -> None:
    url = f"{state.debug_url}/ready"
    wait_until("control plane", lambda: (in_node(state, lambda: http_get(url)) or (0, ""))[0] == 200, timeout,
          state.processes.get("control"), os.path.join(state.root, "var", "log", "weir", "control.log"))


def stop(state: State, name: str) -> None:
    """Stop the daemon ``name`` (SIGTERM, then SIGKILL after a grace period)."""
    pid = state.processes.get(name)
    if pid:
        stop_pid(pid)


def restart(state: State, name: str, timeout: float = 60.0) -> int:
    """Stop the daemon ``name`` if it runs and start it again as ``up`` did; returns the new pid."""
    stop(state, name)
    pid, _ = start(state, name, state.commands[name])
    if name == "control":
        wait_control(state, timeout)
    return pid


def control_store(root: str) -> ConfigStore:
    return ConfigStore(os.path.join(root, "var", "lib", "weir", "control.db"))


def _apply(plan: Plan, node: NodeConfig, progress: Progress) -> None:
    if not plan.config:
        return
    try:
        applied = control_store(node.root).apply(plan.config)
    except StoreError as exc:
        raise UpError(str(exc)) from None
    kinds: dict[str, int] = {}
    for result in applied:
        kinds[result.kind] = kinds.get(result.kind, 0) + 1
    progress("config: applied " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))


def injection(state: State, trust_domain: str) -> tuple[InjectValues, MeshInfo]:
    """How ``up`` injects: embedded flavor, the CA and ADS at the gateway, DNS capture on."""
    values = InjectValues.from_helm({"global": {"caAddress": state.ca_address}, "pilot": {"cni": {"enabled": True}}},
                                    flavor="embedded")
    metadata = {DNS_CAPTURE: "true"}
    if state.workload_cert_ttl:
        metadata["SECRET_TTL"] = state.workload_cert_ttl
    mesh = MeshInfo(trust_domain=trust_domain, proxy_metadata=metadata,
                    proxy_config={"discoveryAddress": state.ads_address})
    return values, mesh


def _namespace_labels(root: str) -> dict[str, dict[str, str]]:
    return {o.name: dict((o.body.get("metadata") or {}).get("labels") or {})
            for o in control_store(root).list("Namespace")}


def admit(state: State, manifest: Mapping[str, Any], extra_labels: Mapping[str, Mapping[str, str]] | None = None,
          ) -> InjectResult:
    """The admission webhook of the running mesh: the pod, injected if Istio's rules say so (the
    namespace's labels from the control plane's store, then ``extra_labels``)."""
    meta = manifest.get("metadata") or {}
    ns = str(meta.get("namespace") or "default") if isinstance(meta, Mapping) else "default"
    labels = {**_namespace_labels(state.root).get(ns, {}), **(extra_labels or {}).get(ns, {})}
    values, mesh = injection(state, state.trust_domain)
    try:
        return inject(dict(manifest), values=values, namespace_labels=labels, mesh=mesh)
    except InjectError as exc:
        raise UpError(f"pod {ns}/{meta.get('name') if isinstance(meta, Mapping) else '?'}: {exc}") from None


def _pods(config: UpConfig, plan: Plan, state: State, node: NodeConfig, progress: Progress) -> None:
    runtime = Runtime(node)
    for pod in plan.pods:
        ns, name = pod.metadata.namespace, pod.metadata.name
        result = admit(state, pod.raw, plan.namespace_labels)
        record = runtime.run(result.pod, f"pod {ns}/{name}")
        ip = record.status.get("podIP", "")
        how = "sidecar injected" if result.injected else f"no sidecar: {result.reason}"
        progress(f"pod {ns}/{name}: started at {ip} ({how})")


def _pod_ready(status: Mapping[str, Any]) -> bool:
    if status.get("phase") != "Running":
        return False
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    if "Ready" in conditions:
        return bool(conditions["Ready"] == "True")
    return all("running" in (c.get("state") or {}) for c in status.get("containerStatuses") or [])


def syncz(state: State) -> list[dict[str, Any]]:
    got = in_node(state, lambda: http_get(f"{state.debug_url}/debug/syncz"))
    if got is None or got[0] != 200:
        return []
    data = json.loads(got[1])
    return data if isinstance(data, list) else []


def synced_proxies(state: State) -> set[tuple[str, str]]:
    """(namespace, pod) of every Envoy that ACKed the config it was sent (clusters and listeners)."""
    found = set()
    for proxy in syncz(state):
        types = proxy.get("types") or {}
        if all(types.get(t, {}).get("state") == "SYNCED" for t in ("CDS", "LDS")):
            found.add((str(proxy.get("namespace")), str(proxy.get("name"))))
    return found


def wait_ready(state: State, node: NodeConfig, plan: Plan, timeout: float, progress: Progress) -> None:
    runtime = Runtime(node)
    wanted = [(p.metadata.namespace, p.metadata.name) for p in plan.pods]
    deadline = time.monotonic() + timeout
    reported: set[tuple[str, str]] = set()
    while True:
        proxies = synced_proxies(state)
        pending = []
        for ns, name in wanted:
            record = runtime.store.get(ns, name)
            if record is None:
                raise UpError(f"pod {ns}/{name} is gone")
            if record.phase in ("Failed", "Succeeded"):
                raise UpError(f"pod {ns}/{name} ended ({record.phase}): see `weir pod logs -n {ns} {name} -c ...`")
            injected = record.has_istio_proxy
            if _pod_ready(record.status) and (not injected or (ns, name) in proxies):
                if (ns, name) not in reported:
                    reported.add((ns, name))
                    progress(f"pod {ns}/{name}: ready" + (" (Envoy holds its config)" if injected else ""))
            else:
                pending.append(f"{ns}/{name}")
        if not pending:
            return
        if time.monotonic() > deadline:
            raise UpError(f"not ready after {timeout:g}s: {', '.join(pending)} "
                          "(see `weir status` and `weir pod logs -n NS POD -c istio-proxy`)")
        time.sleep(0.5)


# --- down ----------------------------------------------------------------------------------


def down(root: str, progress: Progress) -> bool:
    """Remove everything ``up`` made on the node at ``root``; False when there was nothing."""
    state = State.load(root)
    try:
        node: NodeConfig | None = load_node(root)
    except NodeError:
        node = None
    if state is None and node is None:
        return False
    if node is not None and os.path.exists(node.db):
        runtime = Runtime(node)
        for record in runtime.pods():
            try:
                runtime.remove(record.namespace, record.name)
                progress(f"pod {record.namespace}/{record.name}: removed")
            except PodError as exc:
                progress(f"pod {record.namespace}/{record.name}: {exc}")
    if state is not None:
        for name in ("control", "node-agent"):
            pid = state.processes.get(name)
            if pid:
                stop_pid(pid)
                progress(f"{name}: stopped (pid {pid})")
        if state.bridge_created and state.bridge:
            ip(state, "link", "del", state.bridge, check=False)
            progress(f"bridge {state.bridge}: deleted")
        for key, value in state.sysctls.items():
            if in_node(state, functools.partial(read_sysctl, key)) != value:
                in_node(state, functools.partial(write_sysctl, key, value))
                progress(f"{key.replace('/', '.')}: back to {value}")
        for directory in state.created_dirs:
            shutil.rmtree(os.path.join(root, directory), ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state.path)
        progress("files: removed " + (", ".join(os.path.join(root, d) for d in state.created_dirs) or "nothing"))
    return True


def read_state(root: str) -> State:
    state = State.load(root)
    if state is None:
        raise UpError(f"no mesh is up on this node ({os.path.join(root, STATE_FILE)} is missing): run `weir up`")
    return state


def node_of(root: str) -> NodeConfig:
    try:
        return load_node(root)
    except NodeError as exc:
        raise UpError(str(exc)) from None

