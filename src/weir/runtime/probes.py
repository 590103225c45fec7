"""Container probes as kubelet runs them, without the I/O: when each probe is due, how results in
a row decide whether a container has started, is ready or must be killed, what an HTTP probe
sends and how its answer reads, and the words kubelet uses for it all.

One :class:`ContainerProbes` covers one run of one container (a restart makes a new one), with
a :class:`Tracker` per probe, following kubelet's prober worker: the startup probe runs until
it succeeds and holds the other two back until then; a probe waits ``initialDelaySeconds``
from the container's start and then runs every ``periodSeconds``, one attempt at a time; a
result takes effect after ``successThreshold`` / ``failureThreshold`` equal outcomes in a
row; readiness starts out failed, liveness passed, startup unknown; a failed liveness or
startup probe stops probing and asks for the container to be killed. Times are monotonic
seconds given by the caller; :mod:`weir.runtime.probecheck` runs the checks themselves.

Probes go to ``host`` when the probe names one, else to ``127.0.0.1``, where kubelet would use
the pod IP. The pod's supervisor runs inside the pod's network namespace (kubelet runs outside
it), so the loopback address reaches the container directly, and Istio's capture rules return
traffic to 127.0.0.1 uncaptured: a probe reaches the app itself, not the sidecar's inbound
listener, which is what kubelet's pod-IP probes achieve through the rules' probe exclusions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from weir.api.pod_model import Container, HTTPGetAction, Probe, ProbeKind

KINDS: tuple[ProbeKind, ...] = ("startup", "liveness", "readiness")
INITIAL: dict[ProbeKind, bool | None] = {"startup": None, "liveness": True, "readiness": False}
"""kubelet's result for a probe that has not decided yet: not ready, alive, not known to have started."""

DEFAULT_HOST = "127.0.0.1"
USER_AGENT = "kube-probe/1.33"  # kubelet sends kube-probe/<major>.<minor>; the minor whose rules these follow
MAX_BODY = 10 * 1024  # kubelet reads at most 10 KiB of a probe's answer (body, command output)
MAX_HEAD = 64 * 1024
REPORT_EVERY = 60.0
"""Seconds between two "probe failed" events with the same message (Kubernetes' event recorder
folds repeats into one event with a count; the runtime's store keeps rows, so it repeats less)."""


@dataclass(frozen=True)
class Outcome:
    """One attempt of a probe: passed or not, and what it said (kubelet's probe output)."""

    success: bool
    message: str = ""


@dataclass(eq=False)
class Tracker:
    """One probe of one container run: kubelet's prober worker as a state machine."""

    kind: ProbeKind
    probe: Probe
    result: bool | None
    next_at: float
    last: bool | None = None  # the previous outcome, and how many in a row were equal
    run: int = 0
    on_hold: bool = False  # liveness/startup failed: no more attempts until the container restarts
    busy: bool = False  # an attempt is in flight
    reported: tuple[str, float] | None = None

    def observe(self, success: bool) -> bool:
        """Count one outcome; True when the probe's result changes."""
        if success:
            self.reported = None  # the next failure is news
        if success == self.last:
            self.run += 1
        else:
            self.last, self.run = success, 1
        if self.run < (self.probe.success_threshold if success else self.probe.failure_threshold):
            return False
        changed = self.result is not success
        self.result = success
        if not success and self.kind != "readiness":
            self.on_hold, self.run = True, 0
        return changed

    def should_report(self, message: str, now: float) -> bool:
        """Whether a failed attempt saying ``message`` becomes an event (see :data:`REPORT_EVERY`)."""
        if self.reported is not None and self.reported[0] == message and now - self.reported[1] < REPORT_EVERY:
            return False
        self.reported = (message, now)
        return True


@dataclass(eq=False)
class ContainerProbes:
    """The probes of one run of a container that started at ``started_at``."""

    container: Container
    started_at: float
    trackers: dict[ProbeKind, Tracker] = field(init=False)

    def __post_init__(self) -> None:
        self.trackers = {}
        for kind in KINDS:
            probe = self.container.probe(kind)
            if probe is not None:
                self.trackers[kind] = Tracker(kind, probe, INITIAL[kind],
                                              self.started_at + probe.initial_delay_seconds)

    @property
    def started(self) -> bool:
        """No startup probe, or it has passed (kubelet's ``containerStatuses[].started``)."""
        startup = self.trackers.get("startup")
        return startup is None or startup.result is True

    @property
    def ready(self) -> bool:
        readiness = self.trackers.get("readiness")
        return self.started and (readiness is None or readiness.result is True)

    def failed(self) -> Tracker | None:
        """The liveness or startup probe whose failure means the container must be killed."""
        return next((t for t in self.trackers.values() if t.on_hold), None)

    def due(self, now: float) -> list[Tracker]:
        """The probes to attempt now (each then :meth:`begin` and, when it is over, :meth:`finish`)."""
        if self.failed() is not None:
            return []
        out = []
        for tracker in self.trackers.values():
            if tracker.busy or now < tracker.next_at:
                continue
            if (tracker.kind == "startup") == self.started:
                continue  # startup runs until it passes; the others only after
            out.append(tracker)
        return out

    def begin(self, tracker: Tracker, now: float) -> None:
        tracker.busy = True
        tracker.next_at = now + tracker.probe.period_seconds

    def finish(self, tracker: Tracker, outcome: Outcome) -> bool:
        """Count an attempt's outcome; True when the container's started/ready/killed state may have changed."""
        tracker.busy = False
        return tracker.observe(outcome.success)


# ---- what kubelet says ---------------------------------------------------------------------------


def failure_event(kind: ProbeKind, message: str) -> str:
    """The message of kubelet's ``Unhealthy`` warning for a failed attempt."""
    return f"{kind.capitalize()} probe failed: {message}"


def kill_event(container: str, kind: ProbeKind, restart: bool) -> str:
    """The message of kubelet's ``Killing`` event for a failed liveness or startup probe."""
    return f"Container {container} failed {kind} probe" + (", will be restarted" if restart else "")


def go_quote(text: str) -> str:
    """A string as Go's ``%q`` prints it in kubelet's messages (close enough: JSON escapes)."""
    return json.dumps(text, ensure_ascii=False)


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address(host: str) -> str:
    """Where a probe with ``host`` connects (see the module's docstring)."""
    return DEFAULT_HOST if host in ("", "localhost") else host


def url(action: HTTPGetAction, port: int) -> str:
    return f"{action.scheme.lower()}://{host_port(address(action.host), port)}{action.path}"


def dial_error(host: str, port: int, reason: str) -> str:
    """Go's words for a failed connect (``dial tcp 127.0.0.1:8080: connect: connection refused``)."""
    return f"dial tcp {host_port(host, port)}: {reason}"


# ---- HTTP, as kubelet's prober speaks it ---------------------------------------------------------


def http_request(action: HTTPGetAction, port: int) -> bytes:
    """The request an ``httpGet`` probe sends: kubelet's headers (Host, User-Agent, Accept), the
    probe's ``httpHeaders`` over them (an empty User-Agent or Accept removes it), no keep-alive."""
    headers: dict[str, tuple[str, str]] = {
        "host": ("Host", host_port(address(action.host), port)),
        "user-agent": ("User-Agent", USER_AGENT),
        "accept": ("Accept", "*/*"),
    }
    custom: dict[str, tuple[str, list[str]]] = {}
    for header in action.http_headers:
        custom.setdefault(header.name.lower(), (header.name, []))[1].append(header.value)
    lines = [f"GET {action.path} HTTP/1.1"]
    for key, (name, value) in headers.items():
        if key not in custom:
            lines.append(f"{name}: {value}")
    for key, (name, values) in custom.items():
        if key == "host":
            lines.append(f"Host: {values[0]}")
        elif key in ("user-agent", "accept") and values == [""]:
            continue
        else:
            lines += [f"{name}: {value}" for value in values]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


@dataclass(frozen=True)
class HTTPResponse:
    status: int
    body: bytes


def parse_http_response(data: bytes, eof: bool) -> HTTPResponse | None:
    """The answer so far, once it is complete enough to judge (the status, and the body up to
    :data:`MAX_BODY` or its end); None while more is to come. ValueError names a malformed answer."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if eof and not data:
            raise ValueError("EOF")
        if eof or len(data) > MAX_HEAD:
            raise ValueError(f"malformed HTTP response {go_quote(data[:60].decode('latin-1'))}")
        return None
    head = data[:end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise ValueError(f"malformed HTTP response {go_quote(head[0][:60])}")
    status = int(parts[1])
    if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        return parse_http_response(data[end + 4:], eof) if eof or data[end + 4:] else None
    fields = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    body = data[end + 4:]
    length = fields.get("content-length", "")
    complete = (eof or len(body) >= MAX_BODY or status in (204, 304)
                or (length.isdigit() and len(body) >= int(length))
                or ("chunked" in fields.get("transfer-encoding", "").lower() and body.endswith(b"0\r\n\r\n")))
    return HTTPResponse(status, body[:MAX_BODY]) if complete else None


def http_outcome(response: HTTPResponse) -> Outcome:
    """kubelet's verdict: 200-399 passes (a redirect is not followed: kubelet follows one only to
    the same host, and counts one it does not follow as passed)."""
    if 200 <= response.status < 400:
        return Outcome(True, response.body.decode("utf-8", "replace"))
    return Outcome(False, f"HTTP probe failed with statuscode: {response.status}")
