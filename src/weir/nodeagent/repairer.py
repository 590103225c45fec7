"""The repair controller's driver: this node's pods in, Istio's three repairs out.

Two threads, as an informer and a work queue: the *watcher* follows ``PodBackend.watch``
(Kubernetes list/watch, or the embedded runtime's store read every ``poll_interval``) and
queues every change; the *worker* keeps the latest copy of each pod, asks ``decide_action``
(``repair.py``, pure) what to do and does it through the backend:

- repair: find the running pod's network namespace (``backend.netns``) and program the rules
  the agent's ADD would (``CaptureRepair``: ``decide`` -> ``Executor.apply``), in place;
- delete: ``backend.delete`` (Kubernetes: DELETE with uid/resourceVersion preconditions; the
  runtime: remove and run again under a new uid), and its owner makes a pod the agent captures;
- label: ``backend.label`` (``cni.istio.io/uninitialized=true``).

Each attempt records a Warning Event (reasons ``RepairedPod``, ``DeleteBrokenPod``,
``LabelBrokenPod``) and counts one ``{type, result}`` in ``RepairCounts``
(``istio_cni_repair_pods_repaired_total``). A uid that was handled is never handled again; a
failed attempt is retried with back-off up to ``max_attempts`` times (Istio's queue gives 5),
unless retrying cannot help (the pod changed, an invalid annotation). A pod's next change
queues it afresh, as an informer would.

How the agent runs it (``REPAIR_ENABLED`` and a mode on, i.e. ``cfg.mode is not None``)::

    controller = RepairController(backend, cfg, CaptureRepair(service), counts=RepairCounts(metrics.repair))
    controller.start()                            # returns at once; daemon threads
    ...
    await asyncio.to_thread(controller.stop, 10)  # on shutdown: joins both threads

``backend`` is ``weir.platform.kube.connect(node_name=cfg.node_name, label_selector=
cfg.label_selector_text, field_selector=cfg.field_selector_text)`` on Kubernetes, or
``weir.runtime.repairbackend.RuntimePods(runtime, cfg.poll_interval)`` on one machine; the
latter is built in ``weir.cli`` (the layers keep ``weir.nodeagent`` from importing
``weir.runtime``) and handed to the agent.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from weir.capture.apply import CaptureError
from weir.capture.spec import InvalidSpecError
from weir.netns import NetNS
from weir.nodeagent.decide import PassThrough, decide
from weir.nodeagent.repair import Act, Mode, NoAction, RepairConfig, Skip, decide_action, pod_uid, selected
from weir.nodeagent.service import CaptureService
from weir.platform import PodBackend, PodBackendError, PodConflict, PodEvent

log = logging.getLogger("weir.nodeagent.repair")

METRIC = "istio_cni_repair_pods_repaired_total"
SUCCESS, FAIL, SKIP = "success", "fail", "skip"

Programmer = Callable[[Mapping[str, Any], str], str]
"""Program capture in a running pod's namespace: (pod, netns path) -> what was done."""


class NotCaptured(Exception):
    """The node agent would not capture this pod (its ADD passes it through): nothing to repair."""


class CaptureRepair:
    """Re-program a running pod with the agent's own capture logic and settings: the same
    decision as the plugin's ADD (excluded namespaces, the pod's annotations) and the same
    executor and back-end (iptables or native nftables)."""

    def __init__(self, service: CaptureService) -> None:
        self.service = service

    def __call__(self, pod: Mapping[str, Any], netns: str) -> str:
        settings = self.service.settings
        decision = decide(pod, exclude_namespaces=settings.exclude_namespaces,
                          agent_namespace=settings.agent_namespace)  # InvalidSpecError: a bad annotation
        if isinstance(decision, PassThrough):
            raise NotCaptured(decision.reason)
        result = self.service.executor.apply(decision.spec, NetNS(netns), settings.backend)
        return f"{result.backend.value}, {'programmed' if result.changed else 'already in place'}"


class RepairCounts:
    """``istio_cni_repair_pods_repaired_total{type, result}`` as plain counts (thread-safe).
    ``on_count(type, result)`` is called for each one, e.g. a Prometheus counter's ``inc``."""

    def __init__(self, on_count: Callable[[str, str], None] | None = None) -> None:
        self._counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._on_count = on_count

    def add(self, type_: str, result: str) -> None:
        with self._lock:
            self._counts[(type_, result)] = self._counts.get((type_, result), 0) + 1
        if self._on_count is not None:
            self._on_count(type_, result)

    def get(self, type_: str, result: str) -> int:
        with self._lock:
            return self._counts.get((type_, result), 0)

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True)
class Outcome:
    """What one reconcile of a pod did. ``result`` is None when nothing was counted."""

    uid: str
    mode: Mode | None
    result: str | None
    detail: str
    retry: bool = False


@dataclass
class _Pending:
    pod: Mapping[str, Any]
    due: float
    attempts: int = 0


_DONE = {Mode.REPAIR: "capture rules programmed", Mode.DELETE: "deleted", Mode.LABEL: "labeled"}
_VERB = {Mode.REPAIR: "repair", Mode.DELETE: "delete", Mode.LABEL: "label"}


class RepairController:
    """Watch ``backend`` and repair, delete or label the broken pods (``start``/``stop``), or
    handle one pod now (``reconcile``). Fakes come in through the constructor."""

    def __init__(self, backend: PodBackend, cfg: RepairConfig, program: Programmer | None = None, *,
                 counts: RepairCounts | None = None, max_attempts: int = 5, retry_delay: float = 0.5,
                 watch_backoff: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if cfg.mode is Mode.REPAIR and program is None:
            raise ValueError("repair mode needs a programmer (CaptureRepair over the agent's CaptureService)")
        self.backend = backend
        self.cfg = cfg
        self.program = program
        self.counts = counts or RepairCounts()
        self.max_attempts = max(1, max_attempts)
        self.retry_delay = retry_delay
        self.watch_backoff = watch_backoff
        self._clock = clock
        self.handled: set[str] = set()  # uids acted on (or skipped): never again
        self._pending: dict[str, _Pending] = {}
        self._events: queue.Queue[PodEvent | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---- one pod ----------------------------------------------------------------------------------

    def reconcile(self, pod: Mapping[str, Any]) -> Outcome:
        """Decide and act on ``pod`` once: count it, record the Event, remember the uid."""
        uid = pod_uid(pod)
        action = decide_action(pod, self.cfg, self.handled)
        if isinstance(action, NoAction):
            return Outcome(uid, None, None, action.reason)
        who = self._who(pod)
        if isinstance(action, Skip):
            self.handled.add(uid)
            self.counts.add(action.mode.value, SKIP)
            log.info("%s is broken (%s), skipped: %s", who, action.mode.value, action.reason)
            return Outcome(uid, action.mode, SKIP, action.reason)
        assert isinstance(action, Act)
        mode = action.mode
        log.info("%s detected as broken (%s): %s", who, action.reason, _VERB[mode])
        try:
            detail = self._carry_out(mode, pod)
        except NotCaptured as exc:
            self.handled.add(uid)
            self.counts.add(mode.value, SKIP)
            self._event(pod, mode, f"pod detected as broken ({action.reason}), but not repaired: "
                        f"the node agent does not capture it ({exc})")
            return Outcome(uid, mode, SKIP, str(exc))
        except PodConflict as exc:  # gone or changed: its next version is decided afresh
            self.counts.add(mode.value, FAIL)
            log.info("%s: not %sd, it changed: %s", who, _VERB[mode], exc)
            return Outcome(uid, mode, FAIL, str(exc))
        except (PodBackendError, CaptureError, InvalidSpecError) as exc:
            self.counts.add(mode.value, FAIL)
            retry = not isinstance(exc, InvalidSpecError)
            log.warning("%s: failed to %s: %s", who, _VERB[mode], exc)
            self._event(pod, mode, f"pod detected as broken ({action.reason}), but failed to {_VERB[mode]}: {exc}")
            return Outcome(uid, mode, FAIL, str(exc), retry=retry)
        except Exception as exc:  # a bug: counted and retried, never the end of the worker
            self.counts.add(mode.value, FAIL)
            log.exception("%s: failed to %s", who, _VERB[mode])
            return Outcome(uid, mode, FAIL, repr(exc), retry=True)
        self.handled.add(uid)
        self.counts.add(mode.value, SUCCESS)
        log.info("%s: %s (%s)", who, _DONE[mode], detail)
        self._event(pod, mode, f"pod detected as broken ({action.reason}), {_DONE[mode]}"
                    + (f": {detail}" if mode is Mode.REPAIR else ""))
        return Outcome(uid, mode, SUCCESS, detail)

    def _carry_out(self, mode: Mode, pod: Mapping[str, Any]) -> str:
        if mode is Mode.REPAIR:
            assert self.program is not None
            netns = self.backend.netns(pod)
            return f"{netns}: {self.program(pod, netns)}"
        if mode is Mode.DELETE:
            self.backend.delete(pod)
            return "deleted"
        self.backend.label(pod, self.cfg.label_key, self.cfg.label_value)
        return f"{self.cfg.label_key}={self.cfg.label_value}"

    def _event(self, pod: Mapping[str, Any], mode: Mode, message: str) -> None:
        try:
            self.backend.event(pod, "Warning", mode.reason, message)
        except PodBackendError as exc:
            log.warning("%s: could not record the %s event: %s", self._who(pod), mode.reason, exc)

    @staticmethod
    def _who(pod: Mapping[str, Any]) -> str:
        meta = pod.get("metadata") or {}
        return f"pod {meta.get('namespace') or 'default'}/{meta.get('name')}"

    # ---- the queue --------------------------------------------------------------------------------

    def handle(self, event: PodEvent) -> None:
        """Take one change in (worker thread, or a test): the latest copy of a pod is kept."""
        uid = pod_uid(event.pod)
        if event.kind == "DELETED":
            self._pending.pop(uid, None)
            self.handled.discard(uid)
            return
        if not selected(event.pod, self.cfg):
            self._pending.pop(uid, None)
            return
        item = self._pending.get(uid)
        if item is None:
            self._pending[uid] = _Pending(event.pod, self._clock())
        else:
            item.pod = event.pod  # keep its place and its back-off

    def process_due(self) -> list[Outcome]:
        """Reconcile every queued pod that is due; failed ones come back after a back-off."""
        done = []
        now = self._clock()
        for uid, item in sorted(self._pending.items(), key=lambda kv: kv[1].due):
            if item.due > now or self._stop.is_set():
                continue
            del self._pending[uid]
            outcome = self.reconcile(item.pod)
            done.append(outcome)
            attempts = item.attempts + 1
            if outcome.retry and attempts < self.max_attempts:
                delay = self.retry_delay * 2 ** (attempts - 1)
                self._pending[uid] = _Pending(item.pod, self._clock() + delay, attempts)
            elif outcome.retry:
                log.warning("%s: giving up after %d attempts (until it changes)", self._who(item.pod), attempts)
        return done

    def _next_due(self) -> float | None:
        return min((item.due for item in self._pending.values()), default=None)

    # ---- threads ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watcher and the worker (daemon threads)."""
        if self._threads:
            raise RuntimeError("the repair controller is running already")
        self._stop.clear()
        self._threads = [threading.Thread(target=self._watch_loop, name="weir-repair-watch", daemon=True),
                         threading.Thread(target=self._work_loop, name="weir-repair-worker", daemon=True)]
        for thread in self._threads:
            thread.start()
        log.info("repair controller started (%s)", self.cfg.mode.value if self.cfg.mode else "no mode enabled")

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop both threads; an action under way finishes first. True when both ended in time."""
        self._stop.set()
        self.backend.wake()
        self._events.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stopped = not any(t.is_alive() for t in self._threads)
        if stopped:
            self._threads = []
        else:
            log.warning("repair controller: threads still running after %gs", timeout)
        return stopped

    def _watch_loop(self) -> None:
        delay = self.watch_backoff
        while not self._stop.is_set():
            try:
                for event in self.backend.watch(self._stop):
                    self._events.put(event)
                    delay = self.watch_backoff
                    if self._stop.is_set():
                        return
            except PodBackendError as exc:
                log.warning("repair controller: watching pods failed (again in %gs): %s", delay, exc)
            except Exception:
                log.exception("repair controller: watching pods failed (again in %gs)", delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            due = self._next_due()
            wait = 1.0 if due is None else min(1.0, max(0.0, due - self._clock()))
            try:
                event = self._events.get(timeout=wait)
                while event is not None:
                    self.handle(event)
                    event = self._events.get_nowait()
            except queue.Empty:
                pass
            self.process_due()
