"""The embedded runtime (kubelet + containerd for one machine): pods from v1 Pod manifests.

``run`` validates the manifest, records the pod, makes its network namespace, runs the
``loopback`` plugin and the node's CNI chain (CNI_ARGS as kubelet passes them), and starts the
pod's shim, which runs the containers. If any step fails, every earlier step is undone: no
namespace, IP lease, cache entry, capture rule or record is left. ``remove`` stops the shim
(its containers stop with it), runs CNI DEL and deletes the namespace and the record.
``reconcile`` starts a new shim for any pod whose shim is gone, so restarting the runtime or
losing a shim loses no pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from weir.api.pod import Pod, parse_pod
from weir.netns import NetNS, run_in
from weir.platform.local import PodRecord, PodStore
from weir.runtime import podfiles
from weir.runtime import status as st
from weir.runtime.cni import CniError as RuntimeCniError
from weir.runtime.cni import ConfList, Network, RuntimeConf
from weir.runtime.env import container_env
from weir.runtime.node import NodeConfig
from weir.runtime.shim import kill_processes_in

NETNS_DIR = "/var/run/netns"


class PodError(Exception):
    """A pod could not be created, found or removed; the message says why."""


class PodPreconditionError(PodError):
    """The pod is not the one the caller meant (another uid, or gone)."""


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: str = ""
    """What the command printed, when run with ``capture=True``."""


def _netns_name(uid: str) -> str:
    return f"weir-{uid[:12]}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"weir.runtime.shim" in f.read()
    return False


class Runtime:
    def __init__(self, node: NodeConfig) -> None:
        self.node = node
        self.store = PodStore(node.db)

    # ---- CNI ----------------------------------------------------------------------------------------

    def network(self) -> Network:
        try:
            conflist = ConfList.load(self.node.conflist)
        except RuntimeCniError as exc:
            raise PodError(f"node network config: {exc}") from None
        node_ns = NetNS(self.node.node_netns) if self.node.node_netns else None
        return Network(conflist, self.node.cni_path, self.node.cache_dir, node=node_ns)

    @staticmethod
    def _runtime_conf(pod: Pod | Mapping[str, Any], uid: str, sandbox: str, netns: str) -> RuntimeConf:
        if isinstance(pod, Pod):
            namespace, name = pod.metadata.namespace, pod.metadata.name
            ports = [{"hostPort": p.host_port, "containerPort": p.container_port,
                      "protocol": (p.protocol or "TCP").lower()}
                     for c in pod.spec.containers for p in c.ports if p.host_port]
        else:
            meta = pod.get("metadata") or {}
            namespace, name, ports = str(meta.get("namespace") or "default"), str(meta.get("name")), []
        args = (("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name),
                ("K8S_POD_UID", uid), ("K8S_POD_INFRA_CONTAINER_ID", sandbox))
        return RuntimeConf(container_id=sandbox, netns=netns, ifname="eth0", args=args,
                           capability_args={"portMappings": ports} if ports else {})

    # ---- verbs --------------------------------------------------------------------------------------

    def run(self, manifest: Mapping[str, Any], source: str = "<pod>") -> PodRecord:
        pod = parse_pod(manifest, source)  # ManifestError names the field
        if self.store.get(pod.metadata.namespace, pod.metadata.name) is not None:
            raise PodError(f"pod {pod.metadata.namespace}/{pod.metadata.name} already exists")
        uid = pod.metadata.uid or str(uuid.uuid4())
        sandbox = secrets.token_hex(32)
        doc = dict(pod.raw)
        doc["metadata"] = {**(doc.get("metadata") or {}), "uid": uid, "namespace": pod.metadata.namespace}
        doc.pop("status", None)
        initial = st.initial([c.name for c in pod.spec.init_containers], [c.name for c in pod.spec.containers])
        try:
            record = self.store.create(uid, doc, initial)
        except Exception as exc:
            raise PodError(str(exc)) from None
        name = _netns_name(uid)
        netns = os.path.join(NETNS_DIR, name)
        undo: list[tuple[str, Any]] = [("record", uid)]
        try:
            undo.append(("files", uid))
            podfiles.create(self.node, pod, uid)
            self._ip("netns", "add", name)
            undo.append(("netns", name))
            network = self.network()
            rt = self._runtime_conf(pod, uid, sandbox, netns)
            network.loopback_up(sandbox, netns)
            undo.append(("loopback", (network, sandbox, netns)))
            result = network.add(rt)
            undo.append(("cni", (network, rt)))
            ips = [str(ip["address"]).split("/")[0] for ip in result.get("ips", []) if ip.get("address")]
            status = st.set_ip(initial, ips)
            self.store.update(uid, netns=netns, sandbox_id=sandbox, status=status)
            self.store.event(uid, "Normal", "SandboxReady", f"network namespace {name}, IPs {', '.join(ips)}")
            self._start_shim(uid)
        except BaseException as exc:
            self._undo(undo)
            if isinstance(exc, RuntimeCniError):
                raise PodError(f"pod {pod.metadata.namespace}/{pod.metadata.name}: CNI ADD failed: {exc}") from None
            raise
        found = self.store.by_uid(uid)
        return found if found is not None else record

    def _undo(self, undo: list[tuple[str, Any]]) -> None:
        for kind, what in reversed(undo):
            with contextlib.suppress(Exception):
                if kind == "cni":
                    network, rt = what
                    network.delete(rt)
                elif kind == "loopback":
                    network, sandbox, netns = what
                    network.loopback_down(sandbox, netns)
                elif kind == "netns":
                    self._ip("netns", "del", what)
                elif kind == "record":
                    self.store.delete(what)
                elif kind == "files":
                    podfiles.remove(self.node, what)

    def _ip(self, *args: str) -> None:
        out = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise PodError(f"ip {' '.join(args)}: {out.stderr.strip()}")

    def _start_shim(self, uid: str) -> int:
        record = self.store.by_uid(uid)
        assert record is not None
        log_dir = os.path.join(self.node.log_dir, f"{record.namespace}_{record.name}_{uid}")
        os.makedirs(log_dir, exist_ok=True)
        with open(os.path.join(log_dir, "shim.log"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "weir.runtime.shim", "--db", self.node.db, "--uid", uid, "--log-dir", log_dir,
                 "--backoff", str(self.node.backoff_seconds), "--tools-dir", self.node.tools_dir,
                 "--pod-dir", self.node.pod_dir(uid), "--node-root", self.node.root],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        self.store.update(uid, shim_pid=proc.pid)
        return proc.pid

    def get(self, namespace: str, name: str) -> PodRecord:
        record = self.store.get(namespace, name)
        if record is None:
            raise PodError(f"pod {namespace}/{name} not found")
        return record

    def pods(self, namespace: str | None = None) -> list[PodRecord]:
        return self.store.pods(namespace)

    def reconcile(self) -> list[str]:
        """Start a shim for every pod whose shim is gone but whose containers should still run."""
        restarted = []
        for record in self.store.pods():
            if record.deleting or not record.netns or _alive(record.shim_pid):
                continue
            if record.phase in ("Succeeded", "Failed"):
                continue
            if not NetNS(record.netns).exists():
                self.store.update(record.uid, status=st.with_phase(record.status, "Failed"))
                self.store.event(record.uid, "Warning", "SandboxLost", f"network namespace {record.netns} is gone")
                continue
            self._start_shim(record.uid)
            self.store.event(record.uid, "Normal", "ShimRestarted", "the pod's supervisor was restarted")
            restarted.append(f"{record.namespace}/{record.name}")
        return restarted

    def remove(self, namespace: str, name: str, timeout: float = 60.0) -> None:
        record = self.get(namespace, name)
        self.store.update(record.uid, deleting=True)
        if _alive(record.shim_pid):
            os.kill(record.shim_pid, signal.SIGTERM)
            deadline = time.time() + timeout
            while _alive(record.shim_pid) and time.time() < deadline:
                time.sleep(0.05)
            if _alive(record.shim_pid):
                os.kill(record.shim_pid, signal.SIGKILL)
        if record.netns:
            # What no shim stopped (the shim was gone, or a container left a child behind) dies with the pod.
            kill_processes_in(NetNS(record.netns))
        errors = []
        if record.sandbox_id:
            network = self.network()
            rt = self._runtime_conf(record.manifest, record.uid, record.sandbox_id, record.netns)
            try:
                network.delete(rt)
            except RuntimeCniError as exc:
                errors.append(f"CNI DEL: {exc}")
            with contextlib.suppress(Exception):
                network.loopback_down(record.sandbox_id, record.netns)
        if record.netns and NetNS(record.netns).exists():
            try:
                self._ip("netns", "del", os.path.basename(record.netns))
            except PodError as exc:
                errors.append(str(exc))
        if errors:
            raise PodError(f"pod {namespace}/{name} was not fully removed (run `weir pod rm` again): "
                           + "; ".join(errors))
        podfiles.remove(self.node, record.uid)
        self.store.delete(record.uid)

    def _expect(self, namespace: str, name: str, uid: str | None) -> PodRecord:
        record = self.store.get(namespace, name)
        if record is None or record.deleting or (uid is not None and record.uid != uid):
            now = "is gone" if record is None or record.deleting else f"has uid {record.uid} now"
            raise PodPreconditionError(f"pod {namespace}/{name}" + (f" (uid {uid})" if uid else "") + f": it {now}")
        return record

    def recreate(self, namespace: str, name: str, uid: str | None = None) -> PodRecord:
        """Replace the pod as its ReplicaSet would after a delete: remove it, then run the same
        manifest again under a new uid (new sandbox, new CNI ADD). With ``uid`` only that pod is
        replaced (a precondition, as Kubernetes' DeleteOptions); PodPreconditionError otherwise."""
        record = self._expect(namespace, name, uid)
        manifest = json.loads(json.dumps(record.manifest))
        metadata = manifest.get("metadata") or {}
        for key in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            metadata.pop(key, None)
        self.remove(namespace, name)
        return self.run(manifest, f"<pod {namespace}/{name}>")

    def set_label(self, namespace: str, name: str, key: str, value: str, uid: str | None = None) -> PodRecord:
        """Set one label on the pod (its containers keep running); with ``uid``, only on that pod."""
        record = self._expect(namespace, name, uid)
        updated = self.store.set_label(record.uid, key, value)
        if updated is None:
            raise PodPreconditionError(f"pod {namespace}/{name} (uid {record.uid}): it is gone")
        return updated

    def log_path(self, record: PodRecord, container: str | None, previous: bool = False) -> str:
        pod = parse_pod(record.manifest)
        names = [c.name for c in (*pod.spec.init_containers, *pod.spec.containers)]
        name = container or pod.spec.containers[0].name
        if name not in names:
            raise PodError(f"pod {record.namespace}/{record.name} has no container {name!r} "
                           f"(containers: {', '.join(names)})")
        entry = st.container(record.status, name)
        count = int(entry.get("restartCount", 0)) - (1 if previous else 0)
        if count < 0:
            raise PodError(f"container {name!r} has no previous run")
        return os.path.join(self.node.log_dir, f"{record.namespace}_{record.name}_{record.uid}", name, f"{count}.log")

    def exec(self, namespace: str, name: str, container: str | None, argv: Sequence[str], *,
             capture: bool = False, timeout: float | None = None) -> ExecResult:
        """Run ``argv`` in the pod as ``container`` (its uid, gid and environment), as ``kubectl exec``.
        ``capture``: return its standard output instead of passing it through."""
        record = self.get(namespace, name)
        if not record.netns or not NetNS(record.netns).exists():
            raise PodError(f"pod {namespace}/{name} has no running sandbox")
        pod = parse_pod(record.manifest)
        chosen = next((c for c in (*pod.spec.containers, *pod.spec.init_containers)
                       if c.name == (container or pod.spec.containers[0].name)), None)
        if chosen is None:
            raise PodError(f"pod {namespace}/{name} has no container {container!r}")
        env = container_env(pod, chosen, record.status, tools_dir=self.node.tools_dir,
                            pod_dir=self.node.pod_dir(record.uid))
        argv = ["setpriv", f"--reuid={chosen.uid(pod)}", f"--regid={chosen.gid(pod)}", "--clear-groups", "--",
                *argv]

        def go() -> ExecResult:
            if not capture:
                return ExecResult(subprocess.call(argv, env=env, cwd=chosen.working_dir or "/", timeout=timeout))
            out = subprocess.run(argv, env=env, cwd=chosen.working_dir or "/", stdout=subprocess.PIPE, text=True,
                                 check=False, timeout=timeout)
            return ExecResult(out.returncode, out.stdout)

        return run_in(NetNS(record.netns), go)

