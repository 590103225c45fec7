"""Plumbing for the weir-cni plugin tests: a node, a pod, the agent on a background event loop,
the plugin built as its zipapp, and the conflist that chains it after bridge + host-local.

Every namespace, bridge (inside the node namespace), event loop, thread and socket is made
per test with a unique name and removed afterwards, also when the test fails. The plugins run
inside the node namespace (``Network(node=...)``), so nothing reaches the host's links or
netfilter rules; the capture rules go into the pod namespace only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from weir import netns
from weir.cni.bundle import build
from weir.netns import NetNS
from weir.nodeagent.server import PluginEventServer
from weir.nodeagent.service import CaptureService, Settings
from weir.platform import DirectoryPods
from weir.runtime.cni import ConfList, Network, PluginExec, RuntimeConf

REFERENCE_PLUGINS = "/usr/lib/cni"
NETWORK = "weirnet"
PLUGIN = "weir-cni"
WAIT = 10.0  # seconds any one step (a plugin run, the agent starting or stopping) may take
POD_NAMESPACE = "shop"
STATUS_ANNOTATION = "sidecar.istio.io/status"

_counter = itertools.count()


def sh(*argv: str, check: bool = True, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def in_ns(ns: NetNS, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = netns.run(list(argv), ns, timeout=WAIT)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns.path} failed ({out.returncode}): {out.stderr.strip()}")
    return out


@contextmanager
def namespace(name: str) -> Iterator[NetNS]:
    try:
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        yield NetNS(f"/var/run/netns/{name}")
    finally:
        sh("ip", "netns", "del", name, check=False)


# ---- pods -----------------------------------------------------------------------------------


def injected_pod(golden: Path, namespace: str, name: str, **annotations: str) -> dict[str, Any]:
    """The golden injected Deployment (CNI mode: istio-validation, istio-proxy as a native
    sidecar) as a Pod named ``namespace/name``, with ``annotations`` added."""
    docs = yaml.safe_load_all((golden / "injected_examples" / "hello.yaml.cni.injected").read_text())
    deployment = next(d for d in docs if isinstance(d, dict) and d.get("kind") == "Deployment")
    template = deployment["spec"]["template"]
    metadata = dict(template["metadata"])
    metadata.update(name=name, namespace=namespace,
                    annotations={**template["metadata"].get("annotations", {}), **annotations})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}
    assert STATUS_ANNOTATION in metadata["annotations"]
    assert any(c["name"] == "istio-proxy" for c in pod["spec"]["initContainers"])
    return pod


def plain_pod(namespace: str, name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "app", "image": "example/app"}]}}


# ---- the agent ------------------------------------------------------------------------------


class Agent:
    """CaptureService + PluginEventServer on an asyncio loop in a background thread."""

    def __init__(self, pods: Path, run_dir: Path, settings: Settings) -> None:
        self.service = CaptureService(DirectoryPods(str(pods)), str(run_dir / "state"), settings)
        self.server = PluginEventServer(self.service, str(run_dir / "pluginevent.sock"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="weir-agent", daemon=True)
        self.serving = False
        self._started = threading.Event()
        self._error: list[BaseException] = []
        self._hung: socket.socket | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error.append(exc)
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self) -> Agent:
        self.thread.start()
        assert self._started.wait(WAIT), "the agent did not start"
        if self._error:
            raise self._error[0]
        self.serving = True
        self.server.ready.set()
        return self

    def stop(self) -> None:
        """Close the server (the socket goes away); the loop keeps running until close()."""
        if self.serving:
            self.serving = False
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(WAIT)

    def hang(self) -> None:
        """Replace the server with a socket that takes connections and never answers."""
        self.stop()
        self._hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._hung.bind(self.server.socket_path)
        self._hung.listen(64)

    def restart(self) -> None:
        if not self.serving:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(WAIT)
            self.serving = True

    def close(self) -> None:
        if self._hung is not None:
            self._hung.close()
        try:
            if self.thread.is_alive():
                self.stop()
        finally:
            if self.thread.is_alive():
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(WAIT)
            if not self.thread.is_alive():
                self.loop.close()


# ---- running plugins ------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    plugin: str
    command: str
    stdin: dict[str, Any]
    stdout: str
    stderr: str
    code: int


@dataclass
class RecordingExec:
    """The default Exec (inside the node namespace), recording every plugin run."""

    inner: PluginExec
    runs: list[Run] = field(default_factory=list)

    def __call__(self, plugin_type: str, env: Mapping[str, str], stdin: str, /) -> tuple[str, str, int]:
        stdout, stderr, code = self.inner(plugin_type, env, stdin)
        self.runs.append(Run(plugin_type, env["CNI_COMMAND"], json.loads(stdin), stdout, stderr, code))
        return stdout, stderr, code

    def of(self, plugin: str, command: str | None = None) -> list[Run]:
        return [r for r in self.runs if r.plugin == plugin and (command is None or r.command == command)]


def call_plugin(binary: Path, env: Mapping[str, str], netconf: Mapping[str, Any] | bytes,
                *argv_prefix: str) -> tuple[dict[str, Any] | None, subprocess.CompletedProcess[bytes]]:
    """Run the zipapp directly with exactly ``env`` (nothing inherited); returns the decoded
    stdout (None when empty) and the process."""
    data = netconf if isinstance(netconf, bytes) else json.dumps(netconf).encode()
    done = subprocess.run([*argv_prefix, str(binary)], input=data, env=dict(env), capture_output=True,
                          timeout=WAIT, check=False)
    return (json.loads(done.stdout) if done.stdout.strip() else None), done


# ---- the lab --------------------------------------------------------------------------------


@dataclass
class Lab:
    node: NetNS
    pod: NetNS
    pod_name: str  # the pod namespace's name under /var/run/netns
    bridge: str
    subnet: int  # 10.213.<subnet>.0/24
    tmp: Path
    golden: Path
    agent: Agent
    container_id: str = "c0ffee"

    @property
    def bin(self) -> Path:
        return self.tmp / "bin"

    @property
    def plugin(self) -> Path:
        return self.bin / PLUGIN

    @property
    def path(self) -> list[str]:
        return [str(self.bin), REFERENCE_PLUGINS]

    @property
    def run_dir(self) -> Path:
        return self.tmp / "run"

    @property
    def pods(self) -> Path:
        return self.tmp / "pods"

    @property
    def cache(self) -> Path:
        return self.tmp / "cache"

    @property
    def records(self) -> Path:
        return self.run_dir / "state" / "attachments"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "weir-cni.log"

    # -- configuration --

    def weir(self, **keys: Any) -> dict[str, Any]:
        return {"type": PLUGIN, "cni_agent_run_dir": str(self.run_dir), "agent_timeout": 5, **keys}

    def conflist(self, version: str, weir: Mapping[str, Any] | None = None, *, bridge: bool = True) -> ConfList:
        plugins: list[dict[str, Any]] = []
        if bridge:
            plugins.append({"type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False,
                            "ipam": {"type": "host-local", "dataDir": str(self.tmp / "ipam"),
                                     "ranges": [[{"subnet": f"10.213.{self.subnet}.0/24"}]]}})
        plugins.append(dict(weir) if weir is not None else self.weir())
        return ConfList.from_dict({"cniVersion": version, "name": NETWORK, "plugins": plugins})

    def network(self, conflist: ConfList) -> tuple[Network, RecordingExec]:
        recorder = RecordingExec(PluginExec(self.path, self.node, timeout=WAIT * 2))
        return Network(conflist, self.path, self.cache, exec=recorder), recorder

    def cni_args(self, namespace: str, name: str, container_id: str | None = None) -> list[tuple[str, str]]:
        # The reference plugins refuse CNI_ARGS keys they do not know unless IgnoreUnknown=1 comes first.
        return [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name),
                ("K8S_POD_UID", f"uid-{namespace}-{name}"),
                ("K8S_POD_INFRA_CONTAINER_ID", container_id or self.container_id)]

    def rt(self, namespace: str, name: str, *, container_id: str | None = None, netns_path: str | None = None,
           ifname: str = "eth0") -> RuntimeConf:
        cid = container_id or self.container_id
        return RuntimeConf(cid, netns_path or self.pod.path, ifname, args=self.cni_args(namespace, name, cid))

    def env(self, command: str, namespace: str, name: str, **extra: str) -> dict[str, str]:
        """The CNI_* variables only, as a minimal runtime would pass them."""
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": self.container_id, "CNI_NETNS": self.pod.path,
                "CNI_IFNAME": "eth0", "CNI_PATH": os.pathsep.join(self.path),
                "CNI_ARGS": ";".join(f"{k}={v}" for k, v in self.cni_args(namespace, name)), **extra}

    def write_pod(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        (self.pods / f"{meta['namespace']}-{meta['name']}.json").write_text(json.dumps(pod))

    def injected(self, namespace: str, name: str, **annotations: str) -> dict[str, Any]:
        pod = injected_pod(self.golden, namespace, name, **annotations)
        self.write_pod(pod)
        return pod

    def plain(self, namespace: str, name: str) -> dict[str, Any]:
        pod = plain_pod(namespace, name)
        self.write_pod(pod)
        return pod

    # -- what is there --

    def leases(self) -> list[str]:
        """host-local's lease files: one per allocated IP, named by it."""
        directory = self.tmp / "ipam" / NETWORK
        return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit()) if directory.is_dir() else []

    def cache_entries(self) -> list[str]:
        directory = self.cache / "results"
        return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []

    def record_keys(self) -> list[str]:
        return sorted(p.name.removesuffix(".json") for p in self.records.glob("*.json")) if self.records.is_dir() \
            else []

    def capture_records(self) -> list[str]:
        """The executor's per-namespace records (``<dev>-<ino>.json``) in the agent's state."""
        directory = self.run_dir / "state" / "capture"
        return sorted(p.name for p in directory.glob("*.json")) if directory.is_dir() else []

    def veths(self) -> list[str]:
        return [name for name in links(self.node) if name.startswith("veth")]

    def pod_links(self) -> list[str]:
        return sorted(links(self.pod))


def links(ns: NetNS) -> list[str]:
    out = in_ns(ns, "ip", "-j", "link", "show")
    return [link["ifname"] for link in json.loads(out.stdout)]


_SAVES = ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save")


def istio_rules(ns: NetNS) -> dict[str, list[str]]:
    """Every line naming an ISTIO chain, per iptables tool, and native nftables' istio-proxy-*
    tables, in ``ns`` (all lists empty: no capture rules)."""
    out: dict[str, list[str]] = {}
    for tool in _SAVES:
        text = in_ns(ns, tool).stdout
        out[tool] = [line for line in text.splitlines() if "ISTIO" in line and not line.startswith("#")]
    nft = in_ns(ns, "nft", "list", "tables").stdout
    out["nft"] = [line for line in nft.splitlines() if "istio-proxy" in line]  # native nftables' tables
    return out


def has_istio_rules(ns: NetNS) -> bool:
    return any(istio_rules(ns).values())


def delete_one_istio_rule(ns: NetNS) -> tuple[str, str]:
    """Delete the first ``-A ISTIO_*`` rule of the nat table (whichever iptables back-end
    holds it); returns (back-end tool, the deleted rule as iptables-save printed it)."""
    for kind in ("nft", "legacy"):
        text = in_ns(ns, f"iptables-{kind}-save", "-t", "nat").stdout
        for line in text.splitlines():
            if line.startswith("-A ISTIO_"):
                argv = shlex.split(line)
                argv[0] = "-D"
                in_ns(ns, f"iptables-{kind}", "-w", "5", "-t", "nat", *argv)
                return kind, line
    raise AssertionError(f"no ISTIO rule to delete in {ns.path}")


def stale_socket(path: Path) -> None:
    """Leave a socket file nobody listens on (an agent that died): connect gets ECONNREFUSED."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


def new_tag() -> tuple[str, int]:
    n = next(_counter)
    return f"{os.getpid() % 100000}{n}", (os.getpid() + 97 * n) % 250 + 1


def build_plugin(tmp: Path) -> Path:
    return Path(build(str(tmp / "bin" / PLUGIN)))


def modules_outside(allowed_weir: Sequence[str], importtime: str) -> list[str]:
    """Modules in ``-X importtime`` output that are neither standard library nor in
    ``allowed_weir`` (package prefixes)."""
    import sys

    names = set()
    for line in importtime.splitlines():
        if not line.startswith("import time:") or line.rstrip().endswith("imported package"):
            continue
        names.add(line.rsplit("|", 1)[1].strip())
    outside = []
    for name in sorted(names):
        top = name.split(".")[0]
        if top == "weir":
            if name != "weir" and not any(name == p or name.startswith(p + ".") for p in allowed_weir):
                outside.append(name)
        elif top not in sys.stdlib_module_names:
            outside.append(name)
    return outside
