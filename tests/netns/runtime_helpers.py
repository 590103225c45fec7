"""Plumbing for the embedded runtime's tests: a node (its own root, node namespace, subnet and
node agent), the ``weir`` command run as a real process, and views of what the node holds.

A :class:`Node` is made by ``weir node init`` on ``tmp_path``, with the CNI plugins run inside
a namespace of its own (``--node-netns``), so bridges, veths and portmap's rules never reach
the host; the agent (CaptureService reading the runtime's store + PluginEventServer) runs on a
background event loop of the test process. :meth:`Node.close` removes every pod with
``Runtime.remove``, kills by pid whatever shim or pod process is left, deletes the namespaces
and stops the agent, then reports what it had to clean up by force.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from weir.install.procs import alive
from weir.netns import NetNS
from weir.nodeagent.server import PluginEventServer
from weir.nodeagent.service import CaptureService, Settings
from weir.platform.local import PodRecord, PodStore, StorePods
from weir.runtime.node import load_node
from weir.runtime.pods import Runtime
from weir.runtime.shim import kill_processes_in, processes_in

from .cni_helpers import has_istio_rules, istio_rules, sh

T = TypeVar("T")

NETNS_DIR = "/var/run/netns"
WAIT = 15.0  # seconds a pod may take to reach a state
CLI_TIMEOUT = 60.0
BACKOFF = 0.5  # the node's first crash-loop back-off (weir node init --backoff)
STATUS_ANNOTATION = "sidecar.istio.io/status"
PROXY_UID = 1337

_counter = itertools.count()


def new_tag() -> tuple[str, int]:
    """A name suffix and a subnet octet unique to this test (and this pytest process)."""
    n = next(_counter)
    return f"{os.getpid() % 100000}x{n}", (os.getpid() + 37 * n) % 250 + 1


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = WAIT, interval: float = 0.1) -> T:
    """``fn()`` once it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def netns_name(uid: str) -> str:
    """The runtime's name for a pod's network namespace (``weir-`` + the uid's first 12 characters)."""
    return f"weir-{uid[:12]}"


def netns_names() -> set[str]:
    return set(os.listdir(NETNS_DIR)) if os.path.isdir(NETNS_DIR) else set()


def shim_pids(db: str) -> list[int]:
    """Pids of the shims (``python -m weir.runtime.shim --db DB``) serving the store ``db``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"weir.runtime.shim" in argv and db.encode() in argv:
            found.append(int(entry))
    return found




# ---- manifests --------------------------------------------------------------------------------


def pod(name: str, containers: list[dict[str, Any]], *, namespace: str = "default",
        init: list[dict[str, Any]] | None = None, restart: str | None = None,
        annotations: Mapping[str, str] | None = None, uid: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = dict(annotations)
    if uid:
        meta["uid"] = uid
    body: dict[str, Any] = {"containers": containers, **spec}
    if init:
        body["initContainers"] = init
    if restart:
        body["restartPolicy"] = restart
    body.setdefault("terminationGracePeriodSeconds", 2)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": body}


def container(name: str, *command: str, user: int | None = None, group: int | None = None,
              **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": "example/none", "command": list(command), **extra}
    ctx = {k: v for k, v in (("runAsUser", user), ("runAsGroup", group)) if v is not None}
    if ctx:
        c["securityContext"] = ctx
    return c


def sleeper(name: str, user: int | None = None) -> dict[str, Any]:
    return container(name, "sleep", "1000", user=user, group=user)


def injected(name: str, namespace: str = "default", uid: str | None = None) -> dict[str, Any]:
    """What Istio's injector makes of a pod in CNI mode, cut to what the runtime runs: the
    status annotation, the istio-validation init container (``weir capture validate``, as the
    proxy's uid) and an istio-proxy container next to the app."""
    status = {"initContainers": ["istio-validation"], "containers": ["istio-proxy"], "volumes": [],
              "imagePullSecrets": None, "revision": "default"}
    validation = container("istio-validation", sys.executable, "-m", "weir", "capture", "validate",
                           "--timeout", "2", user=PROXY_UID, group=PROXY_UID)
    return pod(name, [sleeper("app"), sleeper("istio-proxy", PROXY_UID)], namespace=namespace,
               init=[validation], annotations={STATUS_ANNOTATION: json.dumps(status)}, uid=uid)



# ---- the race example: examples/pods/injected.yaml started before capture -------------------

EXAMPLE_POD = Path(__file__).resolve().parents[2] / "examples" / "pods" / "injected.yaml"


def example_pod(name: str, namespace: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE_POD.read_text())
    doc["metadata"].update(name=name, namespace=namespace)
    return doc


def validation(record: PodRecord) -> dict[str, Any]:
    """The pod's ``istio-validation`` init container status."""
    return next(dict(c) for c in record.status.get("initContainerStatuses", []) if c["name"] == "istio-validation")


def failed_126(status: Mapping[str, Any]) -> bool:
    """``istio-validation`` last exited 126: the pod's traffic was not captured."""
    entry = next(c for c in status.get("initContainerStatuses", []) if c["name"] == "istio-validation")
    return bool((entry.get("lastState") or {}).get("terminated", {}).get("exitCode") == 126)


def completed_and_running(record: PodRecord) -> bool:
    done = validation(record)["state"].get("terminated") or {}
    return record.phase == "Running" and (done.get("exitCode"), done.get("reason")) == (0, "Completed")


def labelled_uninitialized(record: PodRecord) -> bool:
    """The repair controller's label-mode mark on the pod."""
    return (record.manifest["metadata"].get("labels") or {}).get("cni.istio.io/uninitialized") == "true"


def every_pod(node: Node, namespace: str, names: list[str], ok: Callable[[PodRecord], bool]) -> list[PodRecord] | None:
    """Each named pod, present, not being deleted and ``ok``; None until then."""
    records = [node.store().get(namespace, name) for name in names]
    present = [r for r in records if r is not None and not r.deleting]
    return present if len(present) == len(names) and all(ok(r) for r in present) else None


def start_uncaptured(node: Node, namespace: str, names: list[str], wait: float) -> dict[str, str]:
    """Runs the example as each named pod while nothing captures it and waits for each one's
    ``istio-validation`` to exit 126 (uncaptured, Pending); returns each pod's uid."""
    for name in names:
        node.run(example_pod(name, namespace))
    uids: dict[str, str] = {}
    for name in names:
        node.wait_status(name, "istio-validation failed with 126", failed_126, namespace, wait)
        record = node.record(name, namespace)
        assert not has_istio_rules(NetNS(record.netns)), istio_rules(NetNS(record.netns))
        assert record.phase == "Pending"
        uids[name] = record.uid
    return uids

# ---- the agent --------------------------------------------------------------------------------


class StoreAgent:
    """The node agent in-process: CaptureService over the runtime's store + PluginEventServer,
    on an asyncio loop in a background thread."""

    def __init__(self, db: str, run_dir: str) -> None:
        self.service = CaptureService(StorePods(db), os.path.join(run_dir, "state"),
                                      Settings(pod_lookup_attempts=3, pod_lookup_interval=0.1))
        self.server = PluginEventServer(self.service, os.path.join(run_dir, "pluginevent.sock"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="weir-agent", daemon=True)
        self.thread.start()
        self.serving = False

    def _call(self, coro: Any) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> None:
        if not self.serving:
            self._call(self.server.start())
            self.server.ready.set()
            self.serving = True

    def stop(self) -> None:
        if self.serving:
            self.serving = False
            self._call(self.server.close())

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


# ---- the node ---------------------------------------------------------------------------------


@dataclass
class Node:
    root: Path
    netns: str  # the node namespace's name
    subnet: str
    workdir: Path
    agent: StoreAgent | None = None
    uids: set[str] = field(default_factory=set)  # every pod uid this test used
    _files: itertools.count[int] = field(default_factory=itertools.count)

    # -- where things are --

    @property
    def db(self) -> str:
        return str(self.root / "var/lib/weir/runtime.db")

    @property
    def run_dir(self) -> Path:
        return self.root / "var/run/weir-cni"

    @property
    def leases_dir(self) -> Path:
        return self.root / "var/lib/weir/cni/networks/weir"

    @property
    def cache_dir(self) -> Path:
        return self.root / "var/lib/weir/cni/cache/results"

    @property
    def attachments_dir(self) -> Path:
        return self.run_dir / "state/attachments"

    @property
    def capture_dir(self) -> Path:
        return self.run_dir / "state/capture"

    # -- the weir command --

    def weir(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "weir", *argv], capture_output=True, text=True,
                              timeout=CLI_TIMEOUT, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"weir {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
        return done

    def pod_cli(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.weir("pod", "--root", str(self.root), *argv, check=check)

    def write(self, manifest: Mapping[str, Any] | str) -> Path:
        path = self.workdir / f"pod-{next(self._files)}.yaml"
        path.write_text(manifest if isinstance(manifest, str) else yaml.safe_dump(dict(manifest)))
        return path

    def run(self, manifest: Mapping[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``weir pod run -f`` the manifest; remembers the pod's uid (given, or the one it got)."""
        meta = manifest.get("metadata", {})
        if meta.get("uid"):
            self.uids.add(str(meta["uid"]))
        done = self.pod_cli("run", "-f", str(self.write(manifest)), check=check)
        record = self.store().get(meta.get("namespace", "default"), meta["name"])
        if record is not None:
            self.uids.add(record.uid)
        return done

    # -- what is there --

    def store(self) -> PodStore:
        return PodStore(self.db)

    def runtime(self) -> Runtime:
        return Runtime(load_node(str(self.root)))

    def record(self, name: str, namespace: str = "default") -> PodRecord:
        record = self.store().get(namespace, name)
        assert record is not None, f"no record of pod {namespace}/{name}"
        return record

    def leases(self) -> list[str]:
        """host-local's lease files: one per allocated IP, named by it."""
        d = self.leases_dir
        return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.is_dir() else []

    def cache_entries(self) -> list[str]:
        return sorted(p.name for p in self.cache_dir.iterdir()) if self.cache_dir.is_dir() else []

    def attachments(self) -> list[str]:
        d = self.attachments_dir
        return sorted(p.name.removesuffix(".json") for p in d.glob("*.json")) if d.is_dir() else []

    def capture_records(self) -> list[str]:
        d = self.capture_dir
        return sorted(p.name for p in d.glob("*.json")) if d.is_dir() else []

    def in_subnet(self, ip: str) -> bool:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(self.subnet)

    def status_of(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.record(name, namespace).status

    def wait_status(self, name: str, what: str, pred: Callable[[dict[str, Any]], bool],
                    namespace: str = "default", timeout: float = WAIT) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status_of(name, namespace)
            return status if pred(status) else None

        try:
            return wait_for(f"pod {namespace}/{name}: {what}", probe, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstatus: {json.dumps(self.status_of(name, namespace), indent=1)}") \
                from None

    def ls(self) -> dict[str, dict[str, str]]:
        """``weir pod ls`` as {name: {column: value}} (it must succeed)."""
        out = self.pod_cli("ls", check=True).stdout.splitlines()
        header = out[0].split()
        return {row.split()[1]: dict(zip(header, row.split(), strict=True)) for row in out[1:]}

    # -- cleaning up --

    def close(self) -> list[str]:
        """Remove every pod, kill leftovers by pid, delete the namespaces, stop the agent.
        Returns what had to be forced (an empty list when the runtime cleaned up by itself)."""
        forced: list[str] = []
        try:
            if (self.root / "etc/weir/node.json").exists():
                runtime = self.runtime()
                for record in runtime.pods():
                    self.uids.add(record.uid)
                    inside = processes_in(NetNS(record.netns)) if record.netns else []
                    try:
                        runtime.remove(record.namespace, record.name, timeout=10)
                    except Exception as exc:
                        forced.append(f"Runtime.remove({record.namespace}/{record.name}) failed: {exc}")
                    left = [pid for pid in inside if alive(pid)]
                    if left:  # the namespace may be unmounted already: these would keep it alive
                        forced.append(f"processes {left} of pod {record.namespace}/{record.name} outlived it")
                        for pid in left:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
            for pid in shim_pids(self.db):
                forced.append(f"shim {pid} still running")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for uid in sorted(self.uids):
                name = netns_name(uid)
                if name in netns_names():
                    ns = NetNS(os.path.join(NETNS_DIR, name))
                    left = processes_in(ns)
                    if left:
                        forced.append(f"processes {left} still in {name}")
                        kill_processes_in(ns)
                    forced.append(f"netns {name} still there")
                    sh("ip", "netns", "del", name, check=False)
        finally:
            try:
                if self.agent is not None:
                    self.agent.close()
            finally:
                sh("ip", "netns", "del", self.netns, check=False)
        return forced


def make_node(tmp: Path, *, agent: bool = True, fail_open: str = "") -> Node:
    """``weir node init`` a fresh root under ``tmp`` with its own node namespace and subnet, and
    (unless ``agent`` is false) start the agent. The caller must ``close()`` it."""
    tag, octet = new_tag()
    name = f"wrn{tag}"
    sh("ip", "netns", "add", name)
    tmp.mkdir(parents=True, exist_ok=True)
    node = Node(root=tmp / "root", netns=name, subnet=f"10.213.{octet}.0/24", workdir=tmp)
    try:
        sh("ip", "-n", name, "link", "set", "lo", "up")
        argv = ["node", "init", "--root", str(node.root), "--node-netns", f"{NETNS_DIR}/{name}",
                "--subnet", node.subnet, "--backoff", str(BACKOFF)]
        if fail_open:
            argv += ["--fail-open-namespaces", fail_open]
        node.weir(*argv, check=True)
        node.agent = StoreAgent(node.db, str(node.run_dir))
        if agent:
            node.agent.start()
    except BaseException:
        node.close()
        raise
    return node


def new_uid() -> str:
    return str(uuid.uuid4())
