"""weir-cni: the chained CNI plugin. Thin: it forwards each attachment to the node agent.

Netconf keys (Istio's names where Istio has one):
  cni_agent_run_dir     the agent's run directory (socket, state, log file); default /var/run/weir-cni
  exclude_namespaces    pods here pass through untouched
  pod_namespace         the node agent's namespace (its own pods pass through)
  plugin_log_level      debug | info | warn | error (default info)
  fail_open_namespaces  weir: in these namespaces a pod that may need capture starts without it
                        when the agent is unreachable (default: fail closed, code 11)
  agent_timeout         seconds to wait for the agent (default 5)

ADD passes prevResult through unchanged. DEL always succeeds: when the agent is down and the
namespace still exists it removes weir's rules itself. Logs never go to stdout: they are sent
to the agent (``/v1/log``) when the plugin exits, or appended to ``<run dir>/weir-cni.log``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Mapping

from weir.cni.events import SOCKET_NAME, AgentClient, AgentError, AgentUnavailable, Attachment, Pod
from weir.cni.skel import Call, dispatch
from weir.cni.spec import CniError, Code, k8s_pod_args

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_RUN_DIR = "/var/run/weir-cni"
LOG_FILE = "weir-cni.log"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}


class PluginLog:
    """Buffered structured log lines, flushed to the agent or to a local file."""

    def __init__(self, level: str = "info") -> None:
        self.threshold = _LEVELS.get(level.lower(), 20)
        self.entries: list[dict[str, Any]] = []

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if _LEVELS[level] >= self.threshold:
            self.entries.append({"time": time.time(), "level": level, "msg": msg, **fields})

    def flush(self, client: AgentClient | None, run_dir: str) -> None:
        if not self.entries:
            return
        if client is not None:
            try:
                client.log(self.entries)
                self.entries = []
                return
            except (AgentUnavailable, AgentError):
                pass
        with contextlib.suppress(OSError):
            os.makedirs(run_dir, exist_ok=True)
            with open(os.path.join(run_dir, LOG_FILE), "a") as f:
                f.writelines(json.dumps(e, sort_keys=True) + "\n" for e in self.entries)
        self.entries = []


def _strings(conf: Mapping[str, Any], key: str) -> frozenset[str]:
    value = conf.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CniError(Code.INVALID_NETWORK_CONFIG, f"{key} must be a list of namespace names")
    return frozenset(value)


class Plugin:
    """The CNI verbs (skel.Handlers). ``client_factory`` is the seam for tests."""

    def __init__(self, log: PluginLog | None = None) -> None:
        self.log = log or PluginLog()
        self.client: AgentClient | None = None
        self.run_dir = DEFAULT_RUN_DIR

    # ---- configuration ----------------------------------------------------------------------------

    def _configure(self, call: Call) -> Mapping[str, Any]:
        conf = call.netconf.raw
        run_dir = conf.get("cni_agent_run_dir", DEFAULT_RUN_DIR)
        timeout = conf.get("agent_timeout", 5)
        if not isinstance(run_dir, str) or not run_dir.startswith("/"):
            raise CniError(Code.INVALID_NETWORK_CONFIG, f"cni_agent_run_dir must be an absolute path, not {run_dir!r}")
        self.run_dir = run_dir  # from here on, even a config error is logged where the agent looks
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise CniError(Code.INVALID_NETWORK_CONFIG, f"agent_timeout must be 0-60 seconds, not {timeout!r}")
        level = conf.get("plugin_log_level", "info")
        if not isinstance(level, str) or level.lower() not in _LEVELS:
            raise CniError(Code.INVALID_NETWORK_CONFIG, f"plugin_log_level must be one of {', '.join(_LEVELS)}")
        for key in ("exclude_namespaces", "fail_open_namespaces"):  # checked up front, not when first needed
            _strings(conf, key)
        if not isinstance(conf.get("pod_namespace") or "", str):
            raise CniError(Code.INVALID_NETWORK_CONFIG, f"pod_namespace must be a namespace name, "
                           f"not {conf['pod_namespace']!r}")
        self.log.threshold = _LEVELS[level.lower()]
        self.client = AgentClient(os.path.join(run_dir, SOCKET_NAME), float(timeout))
        return conf

    def _attachment(self, call: Call) -> tuple[Attachment | None, str]:
        """The attachment to report, or None with the reason it passes through."""
        conf = self._configure(call)
        pod = k8s_pod_args(call.cni_args)
        if pod is None:
            return None, "not a Kubernetes pod (no K8S_POD_NAMESPACE/K8S_POD_NAME)"
        if pod.namespace in _strings(conf, "exclude_namespaces"):
            return None, f"namespace {pod.namespace} is excluded"
        agent_ns = conf.get("pod_namespace") or ""
        if agent_ns and pod.namespace == agent_ns and pod.name.startswith("weir-cni-node-"):
            return None, "the node agent's own pod"
        ips = [str(ip.get("address")) for ip in (call.netconf.prev_result or {}).get("ips") or []
               if isinstance(ip, dict) and ip.get("address")]
        return Attachment(call.container_id, call.ifname, call.netns,
                          Pod(pod.namespace, pod.name, pod.uid, pod.infra_container_id), tuple(ips)), ""

    def _client(self) -> AgentClient:
        assert self.client is not None
        return self.client

    # ---- verbs ------------------------------------------------------------------------------------

    def add(self, call: Call) -> dict[str, Any] | None:
        att, why = self._attachment(call)
        if att is None:
            self.log.log("info", "ADD pass-through", container=call.container_id, reason=why)
            return None
        try:
            answer = self._client().add(att)
        except AgentError as exc:
            self.log.log("error", "ADD failed", pod=f"{att.pod.namespace}/{att.pod.name}", error=exc.msg)
            raise CniError(exc.code, exc.msg, exc.details) from None
        except AgentUnavailable as exc:
            if att.pod.namespace in _strings(call.netconf.raw, "fail_open_namespaces"):
                self.log.log("warn", "ADD without capture: agent unreachable and the namespace fails open",
                             pod=f"{att.pod.namespace}/{att.pod.name}", error=str(exc))
                return None
            raise CniError(Code.TRY_AGAIN_LATER, f"weir node agent unreachable; pod {att.pod.namespace}/"
                           f"{att.pod.name} may need capture, try again later", str(exc)) from None
        self.log.log("info", "ADD", pod=f"{att.pod.namespace}/{att.pod.name}", **answer)
        return None

    def check(self, call: Call) -> None:
        att, _ = self._attachment(call)
        if att is None:
            return
        try:
            self._client().check(att)
        except AgentError as exc:
            raise CniError(exc.code, exc.msg, exc.details) from None
        except AgentUnavailable as exc:
            raise CniError(Code.TRY_AGAIN_LATER, "weir node agent unreachable; cannot check capture",
                           str(exc)) from None

    def delete(self, call: Call) -> None:
        try:
            att, _ = self._attachment(call)
        except CniError as exc:  # DEL succeeds even with a broken config
            self.log.log("warn", "DEL with an invalid config; nothing to do", error=exc.msg)
            return
        if att is None:
            return
        try:
            self._client().delete(att)
            return
        except (AgentError, AgentUnavailable) as exc:
            self.log.log("warn", "DEL: agent did not remove the rules; removing them here", error=str(exc))
        self._remove_locally(att)

    def _remove_locally(self, att: Attachment) -> None:
        """Remove the rules (when the namespace exists), then weir's records of the attachment."""
        state = os.path.join(self.run_dir, "state")
        record_path = os.path.join(state, "attachments", f"{att.key}.json")
        if not att.netns or not os.path.exists(att.netns):
            try:
                with open(record_path) as f:
                    dev, ino = json.load(f).get("netns_id", [None, None])
                for suffix in ("json", "lock"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(state, "capture", f"{int(dev)}-{int(ino)}.{suffix}"))
            except (OSError, ValueError, TypeError):
                pass
            with contextlib.suppress(FileNotFoundError):
                os.unlink(record_path)
            return
        try:
            from weir.capture.apply import Executor
            from weir.netns import NetNS

            # Runtimes may start plugins without PATH; the iptables tools live in sbin.
            if not os.environ.get("PATH"):
                os.environ["PATH"] = DEFAULT_PATH
            Executor(state_dir=os.path.join(state, "capture")).remove(NetNS(att.netns))
        except Exception as exc:  # DEL must succeed; the rules die with the namespace
            self.log.log("warn", "DEL: could not remove capture rules", error=str(exc))
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record_path)

    def status(self, call: Call) -> None:
        self._configure(call)
        try:
            self._client().status()
        except (AgentUnavailable, AgentError) as exc:
            raise CniError(Code.NOT_AVAILABLE, "weir node agent is not ready", str(exc)) from None

    def gc(self, call: Call) -> None:
        self._configure(call)
        valid = [{"containerID": str(a.get("containerID", "")), "ifname": str(a.get("ifname", ""))}
                 for a in call.valid_attachments]
        try:
            self._client().gc(valid)
            return
        except (AgentUnavailable, AgentError) as exc:
            self.log.log("warn", "GC: agent unavailable; cleaning up here", error=str(exc))
        keep = {f"{v['containerID']}_{v['ifname']}" for v in valid}
        records = os.path.join(self.run_dir, "state", "attachments")
        for entry in sorted(os.listdir(records)) if os.path.isdir(records) else []:
            key = entry.removesuffix(".json")
            if not entry.endswith(".json") or key in keep:
                continue
            try:
                with open(os.path.join(records, entry)) as f:
                    att = Attachment.from_json(json.load(f).get("attachment"))
            except (OSError, ValueError, AttributeError):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(records, entry))
                continue
            self._remove_locally(att)


def main() -> int:
    plugin = Plugin()
    out, code = dispatch(os.environ, sys.stdin.buffer.read(), plugin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    plugin.log.flush(plugin.client, plugin.run_dir)
    return code
