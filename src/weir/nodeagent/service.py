"""The agent's capture service: what happens when the plugin reports an attachment.

ADD looks the pod up, decides (``decide.py``) and programs the rules with the executor;
CHECK compares what is in place with what ADD would program; DEL removes weir's rules when
the namespace still exists and always succeeds; GC forgets attachments the runtime no longer
has. Each attachment weir saw is recorded in ``<state dir>/attachments/<container>_<ifname>.json``.
Blocking work (the executor) runs on worker threads; this class itself is synchronous.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from weir.capture.apply import Backend, CaptureError, Executor
from weir.capture.spec import CaptureSpec, InterceptionMode, InvalidSpecError
from weir.cni.events import AgentError, Attachment
from weir.netns import NetNS
from weir.nodeagent.decide import Capture, Decision, decide
from weir.platform import PodSource

log = logging.getLogger("weir.nodeagent")

CODE_INVALID_CONFIG = 7
CODE_TRY_AGAIN_LATER = 11
CODE_CAPTURE_FAILED = 100
CODE_RULES_DRIFTED = 101


@dataclass(frozen=True)
class Settings:
    exclude_namespaces: frozenset[str] = frozenset()
    agent_namespace: str = ""
    backend: Backend | None = None  # None: detect as Istio does
    pod_lookup_attempts: int = 10
    pod_lookup_interval: float = 0.2


class CaptureService:
    def __init__(self, pods: PodSource, state_dir: str, settings: Settings | None = None,
                 executor: Executor | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.pods = pods
        self.settings = settings or Settings()
        self.state_dir = state_dir
        self.executor = executor or Executor(state_dir=os.path.join(state_dir, "capture"))
        self._sleep = sleep
        os.makedirs(self._attachments, mode=0o700, exist_ok=True)

    @property
    def _attachments(self) -> str:
        return os.path.join(self.state_dir, "attachments")

    # ---- verbs ------------------------------------------------------------------------------------

    def add(self, att: Attachment) -> dict[str, Any]:
        decision = self._decide(att)
        if isinstance(decision, Capture):
            try:
                result = self.executor.apply(decision.spec, NetNS(att.netns), self.settings.backend)
            except CaptureError as exc:
                raise AgentError(CODE_CAPTURE_FAILED, f"capture rules for {self._who(att)} failed", str(exc)) from None
            reason = f"captured ({result.backend.value})"
            self._record(att, True)
            log.info("ADD %s: %s", self._who(att), reason)
            return {"captured": True, "reason": reason}
        self._record(att, False)
        log.info("ADD %s: pass-through: %s", self._who(att), decision.reason)
        return {"captured": False, "reason": decision.reason}

    def check(self, att: Attachment) -> dict[str, Any]:
        decision = self._decide(att)
        spec = decision.spec if isinstance(decision, Capture) else CaptureSpec(interception_mode=InterceptionMode.NONE)
        try:
            result = self.executor.check(spec, NetNS(att.netns), self.settings.backend)
        except CaptureError as exc:
            raise AgentError(CODE_CAPTURE_FAILED, f"cannot check {self._who(att)}", str(exc)) from None
        if not result.ok:
            raise AgentError(CODE_RULES_DRIFTED, f"capture rules of {self._who(att)} differ from what ADD programs",
                             result.describe())
        captured = isinstance(decision, Capture)
        return {"captured": captured, "reason": "rules match" if captured else "no rules, as expected"}

    def delete(self, att: Attachment) -> dict[str, Any]:
        removed = self._remove_rules(att.netns, self._who(att), self._records().get(att.key, {}))
        self._forget(att.key)
        return {"removed": removed}

    def gc(self, valid: Collection[tuple[str, str]]) -> dict[str, Any]:
        keep = {f"{cid}_{ifname}" for cid, ifname in valid}
        removed = []
        for key, record in self._records().items():
            if key in keep:
                continue
            netns = str(record.get("attachment", {}).get("netns", ""))
            self._remove_rules(netns, key, record)
            self._forget(key)
            removed.append(key)
        return {"removed": removed}

    # ---- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _who(att: Attachment) -> str:
        return f"pod {att.pod.namespace}/{att.pod.name}"

    def _decide(self, att: Attachment) -> Decision:
        pod = None
        for attempt in range(max(1, self.settings.pod_lookup_attempts)):
            pod = self.pods.get(att.pod.namespace, att.pod.name)
            if pod is not None:
                break
            if attempt + 1 < self.settings.pod_lookup_attempts:
                self._sleep(self.settings.pod_lookup_interval)
        if pod is None:
            raise AgentError(CODE_TRY_AGAIN_LATER, f"{self._who(att)} is not known to the node agent yet")
        try:
            return decide(pod, exclude_namespaces=self.settings.exclude_namespaces,
                          agent_namespace=self.settings.agent_namespace, ips=list(att.ips) or None)
        except InvalidSpecError as exc:
            raise AgentError(CODE_INVALID_CONFIG, f"{self._who(att)}: {exc}") from None

    def _remove_rules(self, netns: str, who: str, record: dict[str, Any]) -> bool:
        ns = NetNS(netns)
        if not netns or not ns.exists():
            identity = record.get("netns_id")
            if isinstance(identity, list) and len(identity) == 2:
                self.executor.forget((int(identity[0]), int(identity[1])))
            return False
        try:
            return self.executor.remove(ns, None, self.settings.backend)
        except CaptureError as exc:  # DEL must succeed; the rules die with the namespace anyway
            log.warning("DEL %s: could not remove capture rules: %s", who, exc)
            return False

    def _record(self, att: Attachment, captured: bool) -> None:
        path = os.path.join(self._attachments, f"{att.key}.json")
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            data: dict[str, Any] = {"attachment": att.to_json(), "captured": captured}
            with contextlib.suppress(OSError):
                data["netns_id"] = list(NetNS(att.netns).identity())
            json.dump(data, f)
        os.replace(tmp, path)

    def _forget(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._attachments, f"{key}.json"))

    def _records(self) -> dict[str, dict[str, Any]]:
        out = {}
        for entry in sorted(os.listdir(self._attachments)):
            if entry.endswith(".json"):
                try:
                    with open(os.path.join(self._attachments, entry)) as f:
                        out[entry[: -len(".json")]] = json.load(f)
                except (OSError, ValueError):
                    out[entry[: -len(".json")]] = {}
        return out
