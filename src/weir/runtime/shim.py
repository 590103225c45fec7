"""The per-pod shim: one detached process that runs a pod's containers and keeps its status.

Like containerd's shim it outlives the command that started it, so restarting the runtime
(the CLI) touches no running container. It enters the pod's network namespace on its main
thread at start (it is the only thread), then runs the init containers one after another,
then the containers, each as a process under its runAsUser/runAsGroup with its command, args
and env, output to a log file per start. It applies the pod's restartPolicy with Kubernetes'
crash-loop back-off and writes every change to the pod's status in the store. Containers die
with the shim (PR_SET_PDEATHSIG), so a shim that is killed leaves no orphan; the runtime then
starts a new shim, which carries the restart counts on.

It is also the pod's prober (kubelet's role; :mod:`weir.runtime.probes`): from inside the
pod's namespace it runs the startup, readiness and liveness probes, sets each container's
``started`` and ``ready`` and the pod's conditions, holds what follows a native sidecar back
until the sidecar's startup probe has passed, and kills a container whose liveness or startup
probe failed (SIGTERM, SIGKILL after the grace period), which its restartPolicy then restarts.
Probes never block the loop: sockets are non-blocking and waited on where the loop would sleep,
exec probes are child processes it polls (:mod:`weir.runtime.probecheck`).

  python -m weir.runtime.shim --db PATH --uid POD_UID --log-dir DIR [--backoff SECONDS] [--tools-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import IO, Any

from weir.api.pod import Container, Pod, parse_pod
from weir.api.pod_model import ProbeKind
from weir.netns import NetNS, enter_this_process
from weir.platform.local import PodStore
from weir.runtime import status as st
from weir.runtime.env import container_argv, container_env
from weir.runtime.node import NodeConfig, load_node
from weir.runtime.probecheck import Checks, ExecContext, start_check
from weir.runtime.probes import ContainerProbes, Outcome, Tracker, failure_event, kill_event

PR_SET_PDEATHSIG = 1
TOKEN_CHECK_INTERVAL = 60.0
"""Seconds between checks of the pod's token age (it is rewritten at 80% of its life)."""
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def processes_in(ns: NetNS, exclude: Collection[int] = ()) -> list[int]:
    """The pids of every process whose network namespace is ``ns`` (the pod's processes: what a
    container left behind, a child of a child that PR_SET_PDEATHSIG does not reach)."""
    try:
        identity = ns.identity()
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        try:
            st_ = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st_.st_dev, st_.st_ino) == identity:
            found.append(int(entry))
    return found


def kill_processes_in(ns: NetNS, exclude: Collection[int] = ()) -> list[int]:
    """SIGKILL every process in ``ns`` (but ``exclude``) and wait briefly until they are gone."""
    pids = processes_in(ns, exclude)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 5
    while pids and time.time() < deadline:
        pids = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and not _zombie(pid)]
        time.sleep(0.02)
    return pids


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@dataclass
class Unit:
    """One container the shim runs."""

    container: Container
    init: bool
    sidecar: bool = False  # a native sidecar: an init container with restartPolicy Always
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    started: float = 0.0
    next_start: float = 0.0
    done: bool = False
    restarts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    probes: ContainerProbes | None = None  # this run's probes (monotonic times)
    killing: ProbeKind | None = None  # killed for this failed probe: restarted unless restartPolicy is Never
    kill_at: float = 0.0  # (monotonic) when SIGKILL follows the SIGTERM of such a kill

    @property
    def started_up(self) -> bool:
        """Runs, and its startup probe (if any) has passed: what follows a native sidecar waits for this."""
        return self.proc is not None and self.probes is not None and self.probes.started


class Shim:
    def __init__(self, store: PodStore, uid: str, log_dir: str, backoff: float, tools_dir: str = "",
                 pod_dir: str = "", node: NodeConfig | None = None) -> None:
        self.pod_dir = pod_dir
        self.node = node
        self._token_checked = time.monotonic()
        self.tools_dir = tools_dir
        self.store = store
        self.uid = uid
        self.log_dir = log_dir
        self.backoff = backoff
        record = store.by_uid(uid)
        if record is None:
            raise SystemExit(f"shim: no pod with uid {uid}")
        self.record = record
        self.pod: Pod = parse_pod(record.manifest)
        self.status = record.status
        self.stopping = False
        self.units = [Unit(c, True, c.restart_policy == "Always") for c in self.pod.spec.init_containers]
        self.units += [Unit(c, False) for c in self.pod.spec.containers]
        self.sidecars = {u.container.name for u in self.units if u.sidecar}
        self.checks: Checks[tuple[str, Tracker]] = Checks()
        now = time.time()
        for unit in self.units:
            entry = st.container(self.status, unit.container.name)
            unit.restarts = int(entry.get("restartCount", 0))
            state = entry.get("state", {})
            if "running" in state:
                # The previous shim died and took this container with it (SIGKILL): count a restart.
                # The restartPolicy applies as to any container that died.
                self.status = st.terminated(self.status, unit.container.name, 137, None, now,
                                            "the pod's supervisor stopped", signal.SIGKILL)
                if self.should_restart(unit, 137):
                    self.status = st.back_off(self.status, unit.container.name, 0)
                    unit.restarts += 1
                else:
                    unit.done = True
            elif "terminated" in state:
                # It ended under the previous shim and was not to be restarted: it stays ended.
                unit.done = not self.should_restart(unit, int(state["terminated"].get("exitCode", 1)))
        # Once a container has started, the pod stays initialized: sidecars that restart hold nothing back.
        self.initialized = not self.pod.spec.init_containers or any(
            st.ever_started(st.container(self.status, u.container.name)) for u in self.units if not u.init)

    # ---- status -------------------------------------------------------------------------------------

    def save(self) -> None:
        self.store.update(self.uid, status=self.status)

    def succeeded(self, unit: Unit) -> bool:
        return unit.done and st.completed(st.container(self.status, unit.container.name))

    def phase(self) -> str:
        inits = [u for u in self.units if u.init and not u.sidecar]
        if any(u.done and not self.succeeded(u) for u in inits):
            return "Failed"  # an init container failed and is not retried (restartPolicy Never)
        if not self.initialized:
            return "Pending"  # init containers still to complete, or a native sidecar still starting
        mains = [u for u in self.units if not u.init]
        if all(u.done for u in mains):
            codes = [st.container(self.status, u.container.name)["state"].get("terminated", {}).get("exitCode", 1)
                     for u in mains]
            return "Succeeded" if all(c == 0 for c in codes) else "Failed"
        return "Running"

    # ---- processes ----------------------------------------------------------------------------------

    def start(self, unit: Unit) -> None:
        c = unit.container
        unit.killing = None
        directory = os.path.join(self.log_dir, c.name)
        os.makedirs(directory, exist_ok=True)
        unit.log = open(os.path.join(directory, f"{unit.restarts}.log"), "ab")  # noqa: SIM115 - kept open while it runs
        env = container_env(self.pod, c, self.status, tools_dir=self.tools_dir, pod_dir=self.pod_dir)
        now = time.time()
        try:
            unit.proc = subprocess.Popen(
                container_argv(c, env), env=env, cwd=c.working_dir or "/", stdin=subprocess.DEVNULL,
                stdout=unit.log, stderr=subprocess.STDOUT, user=c.uid(self.pod), group=c.gid(self.pod),
                extra_groups=[], start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - the shim starts containers from its only thread
            )
        except OSError as exc:
            unit.log.write(f"weir: cannot start {c.command[0]}: {exc.strerror}\n".encode())
            unit.log.close()
            self.status = st.start_failed(self.status, c.name, f"cannot start {c.command[0]}: {exc.strerror}", now)
            self.exited(unit, 128, now)
            return
        unit.started = now
        unit.probes = ContainerProbes(c, time.monotonic())
        self.status = st.running(self.status, c.name, now, started=unit.probes.started, ready=unit.probes.ready)
        self.store.event(self.uid, "Normal", "Started", f"Started container {c.name}")

    def exited(self, unit: Unit, code: int, now: float, sig: int | None = None) -> None:
        c = unit.container
        if unit.log is not None and not unit.log.closed:
            unit.log.close()
        if unit.proc is not None:
            self.status = st.terminated(self.status, c.name, code, unit.started, now, signal=sig)
        unit.proc = None
        self.drop_probes(unit)
        if not self.stopping and self.should_restart(unit, code):
            delay = st.backoff_delay(unit.restarts, self.backoff)
            unit.restarts += 1
            unit.next_start = now + delay
            self.status = st.back_off(self.status, c.name, delay)
            self.store.event(self.uid, "Warning", "BackOff", f"Back-off {delay:g}s restarting container {c.name}")
        else:
            unit.done = True

    def should_restart(self, unit: Unit, code: int) -> bool:
        """Whether the pod's restartPolicy restarts ``unit`` after it exited with ``code``."""
        policy = "Always" if unit.sidecar else self.pod.spec.restart_policy
        if unit.init and not unit.sidecar and policy != "Never":
            policy = "OnFailure"  # init containers are retried until they succeed
        # A container killed for a failed probe failed, whatever its exit code (kubelet restarts it).
        return policy == "Always" or (policy == "OnFailure" and (code != 0 or unit.killing is not None))

    def reap(self) -> None:
        for unit in self.units:
            if unit.proc is None:
                continue
            code = unit.proc.poll()
            if code is None:
                continue
            sig = -code if code < 0 else None
            self.exited(unit, 128 + sig if sig else code, time.time(), sig)

    def due(self, now: float) -> list[Unit]:
        """What may start now: init containers strictly in order, then every container. When the
        init sequence is through, the pod is initialized for good (restarting sidecars gate nothing)."""
        ready: list[Unit] = []
        if self.initialized:
            ready += [u for u in self.units if u.sidecar and not u.done and u.proc is None and u.next_start <= now]
        else:
            for unit in self.units:
                if not unit.init:
                    break
                if unit.done:
                    if not unit.sidecar and not self.succeeded(unit):
                        return ready  # a failed init container that is not retried: nothing after it starts
                    continue
                if unit.proc is None and unit.next_start <= now:
                    ready.append(unit)
                if not unit.sidecar:
                    return ready  # the next init container waits for this one
                if not unit.started_up:
                    return ready  # a sidecar must run, its startup probe passed, before what follows
            self.initialized = True
        ready += [u for u in self.units if not u.init and not u.done and u.proc is None and u.next_start <= now]
        return ready

    # ---- probes -------------------------------------------------------------------------------------

    def probe(self) -> None:
        """Start the attempts that are due (they finish in :meth:`probed`)."""
        now = time.monotonic()
        for unit in self.units:
            if unit.proc is None or unit.probes is None or unit.killing is not None:
                continue
            for tracker in unit.probes.due(now):
                unit.probes.begin(tracker, now)
                check = start_check(unit.container, tracker.probe.handler, tracker.probe.timeout_seconds, now,
                                    self.exec_context(unit.container))
                self.checks.start((unit.container.name, tracker), check)

    def exec_context(self, c: Container) -> ExecContext:
        """An exec probe runs as the container would: its user, environment and working directory."""
        return ExecContext(env=container_env(self.pod, c, self.status, tools_dir=self.tools_dir, pod_dir=self.pod_dir),
                           cwd=c.working_dir or "/", uid=c.uid(self.pod), gid=c.gid(self.pod),
                           preexec=_die_with_parent)

    def probed(self, results: list[tuple[tuple[str, Tracker], Outcome]]) -> None:
        """Count finished attempts: events for failures, started/ready into the status, kills."""
        now = time.monotonic()
        for (name, tracker), outcome in results:
            unit = next(u for u in self.units if u.container.name == name)
            probes = unit.probes
            if probes is None or unit.killing is not None or probes.trackers.get(tracker.kind) is not tracker:
                continue  # an attempt on a run that is over
            if not outcome.success and tracker.should_report(outcome.message, now):
                self.store.event(self.uid, "Warning", "Unhealthy", failure_event(tracker.kind, outcome.message))
            if probes.finish(tracker, outcome):
                self.status = st.probed(self.status, name, started=probes.started, ready=probes.ready)
                failed = probes.failed()
                if failed is not None:
                    self.kill_for_probe(unit, failed)

    def kill_for_probe(self, unit: Unit, failed: Tracker) -> None:
        """SIGTERM the container, SIGKILL after the probe's (else the pod's) grace period."""
        assert unit.proc is not None
        unit.killing = failed.kind
        self.drop_probes(unit)
        restart = self.should_restart(unit, 1)
        self.store.event(self.uid, "Normal", "Killing", kill_event(unit.container.name, failed.kind, restart))
        grace = failed.probe.termination_grace_period_seconds
        grace = self.pod.spec.termination_grace_period_seconds if grace is None else grace
        unit.kill_at = time.monotonic() + grace
        with contextlib.suppress(ProcessLookupError):
            os.killpg(unit.proc.pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)

    def finish_kills(self) -> None:
        """SIGKILL what a probe's kill gave a grace period and is still running after it."""
        now = time.monotonic()
        for unit in self.units:
            if unit.killing is not None and unit.proc is not None and now >= unit.kill_at:
                unit.kill_at = float("inf")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(unit.proc.pid, signal.SIGKILL)

    def drop_probes(self, unit: Unit) -> None:
        """Cancel the attempts in flight of ``unit``'s probes (its status keeps what they found)."""
        if unit.probes is not None:
            for tracker in unit.probes.trackers.values():
                self.checks.cancel((unit.container.name, tracker))

    def stop(self) -> None:
        self.checks.close()
        running = [u for u in self.units if u.proc is not None]
        for unit in running:
            assert unit.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(unit.proc.pid, signal.SIGTERM)
        deadline = time.time() + self.pod.spec.termination_grace_period_seconds
        while any(u.proc is not None and u.proc.poll() is None for u in running) and time.time() < deadline:
            time.sleep(0.05)
        for unit in running:
            if unit.proc is not None and unit.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(unit.proc.pid, signal.SIGKILL)
                unit.proc.wait()
        self.reap()

    # ---- main loop ----------------------------------------------------------------------------------

    def refresh_token(self) -> None:
        """Rewrite the pod's service-account token before it expires, as kubelet does (once a minute)."""
        now = time.monotonic()
        if self.node is None or now < self._token_checked + TOKEN_CHECK_INTERVAL:
            return
        self._token_checked = now
        # imported on first use: token signing pulls in weir.pki (cryptography), a third of the
        # shim's start-up, which every pod waits for; the first check is a minute in
        from weir.runtime import podfiles
        try:
            if podfiles.refresh_token(self.node, self.pod, self.uid):
                self.store.event(self.uid, "Normal", "TokenRefreshed", "service-account token rewritten")
        except (OSError, ValueError) as exc:
            self.store.event(self.uid, "Warning", "TokenRefreshFailed", f"service-account token: {exc}")

    def run(self) -> int:
        def on_signal(*_: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.store.update(self.uid, shim_pid=os.getpid())
        # Whatever a previous shim of this pod left running in the sandbox is not supervised by
        # anyone: kill it before starting the containers again.
        kill_processes_in(NetNS(self.record.netns), exclude={os.getpid()})
        last: dict[str, Any] | None = None
        while not self.stopping:
            self.reap()
            now = time.time()
            if self.phase() not in ("Succeeded", "Failed"):
                for unit in self.due(now):
                    self.start(unit)
            self.probe()
            self.finish_kills()
            self.status = st.with_phase(self.status, self.phase(), self.sidecars)
            if self.status != last:
                self.save()
                last = self.status
            if self.status["phase"] in ("Succeeded", "Failed"):
                break  # the pod is over: native sidecars still running are stopped below
            self.refresh_token()
            self.probed(self.checks.wait(0.05, time.monotonic))  # where the loop sleeps
        self.stopping = True
        self.stop()
        self.status = st.with_phase(self.status, self.phase(), self.sidecars)
        self.save()
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="weir-shim")
    parser.add_argument("--db", required=True)
    parser.add_argument("--uid", required=True)
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--backoff", type=float, default=st.BACKOFF_INITIAL)
    parser.add_argument("--tools-dir", default="")
    parser.add_argument("--pod-dir", default="")
    parser.add_argument("--node-root", default="", help="the node, whose token key refreshes the pod's token")
    args = parser.parse_args(argv)
    store = PodStore(args.db)
    record = store.by_uid(args.uid)
    if record is None or not record.netns:
        print(f"shim: pod {args.uid} has no sandbox", file=sys.stderr)
        return 1
    enter_this_process(NetNS(record.netns))
    node = load_node(args.node_root) if args.node_root else None
    return Shim(store, args.uid, args.log_dir, args.backoff, args.tools_dir, args.pod_dir, node).run()


if __name__ == "__main__":
    raise SystemExit(main())
