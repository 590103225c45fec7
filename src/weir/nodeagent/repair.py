"""Repair of pods that raced the node agent: detection and decisions, as pure functions.

A pod that started before the agent could capture it (node start-up, agent upgrade) runs with
no rules; its ``istio-validation`` init container then fails with exit code 126 and crash-loops.
``matches_filter`` recognises such a pod exactly as Istio's repair controller does
(cni/pkg/repair/repaircontroller.go ``matchesFilter``) and ``decide_action`` picks what to do
with it: the first enabled mode of repair (program the rules in place) > delete (its owner makes
a new one, which the agent captures) > label (``cni.istio.io/uninitialized=true``), never twice
for one pod uid. ``RepairConfig`` holds the settings under Istio's names (``REPAIR_*``), parsed
and checked once. The driver (``repairer.py``) does the I/O; this module knows no backend.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from weir.nodeagent.settings import ConfigError, Source

DEFAULT_INIT_CONTAINER = "istio-validation"
DEFAULT_EXIT_CODE = 126  # Istio's ValidationErrorCode
DEFAULT_LABEL_KEY = "cni.istio.io/uninitialized"
DEFAULT_LABEL_VALUE = "true"
DEFAULT_SIDECAR_ANNOTATION = "sidecar.istio.io/status"
DEFAULT_POLL_INTERVAL = 1.0

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_QUALIFIED = re.compile(rf"(({_DNS_SUBDOMAIN})/)?{_NAME}")
_LABEL_VALUE = re.compile(rf"({_NAME})?")
_FIELD_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")


class Mode(enum.Enum):
    """What is done to a broken pod; the value is the metric's ``type`` label."""

    REPAIR = "repair"
    DELETE = "delete"
    LABEL = "label"

    @property
    def reason(self) -> str:
        """The Event reason (Istio's, and weir's ``RepairedPod``)."""
        return {"repair": "RepairedPod", "delete": "DeleteBrokenPod", "label": "LabelBrokenPod"}[self.value]


# ---- selectors ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRequirement:
    """One term of a Kubernetes label selector (``k``, ``!k``, ``k=v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``)."""

    key: str
    op: Literal["exists", "!", "=", "!=", "in", "notin"]
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, Any]) -> bool:
        present = self.key in labels
        value = str(labels.get(self.key, ""))
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        return not present or value not in self.values  # != and notin match an absent key (as Kubernetes)

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True)
class FieldRequirement:
    """One term of a field selector (``path=value`` or ``path!=value``); a missing field reads as ``""``."""

    path: str
    op: Literal["=", "!="]
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        current: Any = obj
        for part in self.path.split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        text = "" if current is None else ("true" if current is True else "false" if current is False else str(current))
        return (text == self.value) == (self.op == "=")

    def __str__(self) -> str:
        return f"{self.path}{self.op}{self.value}"


def _split_terms(text: str) -> list[str]:
    """Split on the commas that are not inside ``( )``."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms]


def _check_key(name: str, text: str, key: str) -> str:
    prefix, _, local = key.rpartition("/")
    if not _QUALIFIED.fullmatch(key) or len(local) > 63 or len(prefix) > 253:
        raise ConfigError(f"{name}: invalid value {text!r}: {key!r} is not a valid label key")
    return key


def _check_value(name: str, text: str, value: str) -> str:
    if not _LABEL_VALUE.fullmatch(value) or len(value) > 63:
        raise ConfigError(f"{name}: invalid value {text!r}: {value!r} is not a valid label value")
    return value


_SET_TERM = re.compile(r"(?P<key>[^\s!=()]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)")
_EQ_TERM = re.compile(r"(?P<key>[^\s!=()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=()]*)")


def parse_label_selector(name: str, text: str) -> tuple[LabelRequirement, ...]:
    """Parse a label selector as ``kubectl -l`` takes it; ConfigError names ``name`` and the value."""
    if not text.strip():
        return ()
    out: list[LabelRequirement] = []
    for term in _split_terms(text):
        if m := _SET_TERM.fullmatch(term):
            values = tuple(v.strip() for v in m["values"].split(","))
            op: Literal["in", "notin"] = "in" if m["op"] == "in" else "notin"
            out.append(LabelRequirement(_check_key(name, text, m["key"]), op,
                                        tuple(_check_value(name, text, v) for v in values)))
        elif m := _EQ_TERM.fullmatch(term):
            eq: Literal["=", "!="] = "!=" if m["op"] == "!=" else "="
            out.append(LabelRequirement(_check_key(name, text, m["key"]), eq, (_check_value(name, text, m["value"]),)))
        elif term.startswith("!"):
            out.append(LabelRequirement(_check_key(name, text, term[1:].strip()), "!"))
        elif term:
            out.append(LabelRequirement(_check_key(name, text, term), "exists"))
        else:
            raise ConfigError(f"{name}: invalid value {text!r}: an empty term")
    return tuple(out)


def parse_field_selector(name: str, text: str) -> tuple[FieldRequirement, ...]:
    """Parse a field selector (``a.b=v,c!=w``); ConfigError names ``name`` and the value."""
    if not text.strip():
        return ()
    out = []
    for term in _split_terms(text):
        m = re.fullmatch(r"(?P<path>[^=!]+?)\s*(?P<op>==|=|!=)\s*(?P<value>[^,]*)", term)
        if m is None or not _FIELD_PATH.fullmatch(m["path"]):
            raise ConfigError(f"{name}: invalid value {text!r}: {term!r} is not path=value or path!=value")
        op: Literal["=", "!="] = "!=" if m["op"] == "!=" else "="
        out.append(FieldRequirement(m["path"], op, m["value"].strip()))
    return tuple(out)


# ---- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairConfig:
    """The repair controller's settings (Istio's ``RepairConfig``; env ``REPAIR_*``).

    ``repair_pods`` defaults to true, as Istio's Helm chart sets it (the agent's own default is
    false). ``init_exit_code`` 0 and an empty ``init_termination_message`` match anything; an
    empty ``init_container_name`` matches every init container and an empty
    ``sidecar_annotation`` every pod (as in Istio). ``node_name`` and the selectors choose the
    pods a Kubernetes watch sees. ``poll_interval`` is weir's: how often the embedded runtime's
    store is read (it has no watch API).
    """

    enabled: bool = True
    repair_pods: bool = True
    delete_pods: bool = False
    label_pods: bool = False
    init_container_name: str = DEFAULT_INIT_CONTAINER
    init_exit_code: int = DEFAULT_EXIT_CODE
    init_termination_message: str = ""
    label_key: str = DEFAULT_LABEL_KEY
    label_value: str = DEFAULT_LABEL_VALUE
    sidecar_annotation: str = DEFAULT_SIDECAR_ANNOTATION
    node_name: str = ""
    label_selector: tuple[LabelRequirement, ...] = ()
    field_selector: tuple[FieldRequirement, ...] = ()
    poll_interval: float = DEFAULT_POLL_INTERVAL

    @property
    def mode(self) -> Mode | None:
        """The mode that applies (the first enabled of repair > delete > label), or None."""
        if not self.enabled:
            return None
        for mode, on in ((Mode.REPAIR, self.repair_pods), (Mode.DELETE, self.delete_pods),
                         (Mode.LABEL, self.label_pods)):
            if on:
                return mode
        return None

    @property
    def label_selector_text(self) -> str:
        return ",".join(str(r) for r in self.label_selector)

    @property
    def field_selector_text(self) -> str:
        """The configured field selectors (without this node's ``spec.nodeName``)."""
        return ",".join(str(r) for r in self.field_selector)

    @classmethod
    def from_source(cls, src: Source) -> RepairConfig:
        """Read every setting (flag ``--repair-x-y``, else env ``REPAIR_X_Y``) and check it."""

        def flag(var: str) -> str:
            return var.lower().replace("_", "-")

        def boolean(var: str, default: bool) -> bool:
            return src.boolean(flag(var), var, default)

        def text(var: str, default: str = "") -> tuple[str, str]:
            return src.get(flag(var), var, default)

        name, init_name = text("REPAIR_INIT_CONTAINER_NAME", DEFAULT_INIT_CONTAINER)
        if init_name and (not re.fullmatch(_DNS_LABEL, init_name) or len(init_name) > 63):
            raise ConfigError(f"{name}: invalid value {init_name!r}: not a container name (DNS-1123 label)")
        name, key = text("REPAIR_BROKEN_POD_LABEL_KEY", DEFAULT_LABEL_KEY)
        _check_key(name, key, key)
        name, value = text("REPAIR_BROKEN_POD_LABEL_VALUE", DEFAULT_LABEL_VALUE)
        _check_value(name, value, value)
        name, annotation = text("REPAIR_SIDECAR_ANNOTATION", DEFAULT_SIDECAR_ANNOTATION)
        if annotation:
            _check_key(name, annotation, annotation)
        name, node = text("REPAIR_NODE_NAME")
        if node and (not re.fullmatch(_DNS_SUBDOMAIN, node) or len(node) > 253):
            raise ConfigError(f"{name}: invalid value {node!r}: not a node name (DNS-1123 subdomain)")
        name, interval = text("REPAIR_POLL_INTERVAL", str(DEFAULT_POLL_INTERVAL))
        try:
            poll = float(interval)
        except ValueError:
            poll = math.nan
        if not 0 < poll <= 60:
            raise ConfigError(f"{name}: invalid value {interval!r}: expected seconds, more than 0 and at most 60")
        return cls(
            enabled=boolean("REPAIR_ENABLED", True),
            repair_pods=boolean("REPAIR_REPAIR_PODS", True),
            delete_pods=boolean("REPAIR_DELETE_PODS", False),
            label_pods=boolean("REPAIR_LABEL_PODS", False),
            init_container_name=init_name,
            init_exit_code=src.integer(flag("REPAIR_INIT_CONTAINER_EXIT_CODE"), "REPAIR_INIT_CONTAINER_EXIT_CODE",
                                       DEFAULT_EXIT_CODE, minimum=0, maximum=255),
            init_termination_message=text("REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE")[1],
            label_key=key,
            label_value=value,
            sidecar_annotation=annotation,
            node_name=node,
            label_selector=parse_label_selector(*text("REPAIR_LABEL_SELECTORS")),
            field_selector=parse_field_selector(*text("REPAIR_FIELD_SELECTORS")),
            poll_interval=poll,
        )


# ---- detection ---------------------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _terminated(container: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """``container[key].terminated``, or None when absent (as a nil pointer in Go)."""
    term = _mapping(container.get(key)).get("terminated")
    return term if isinstance(term, Mapping) else None


def _exit_code(term: Mapping[str, Any]) -> int:
    code = term.get("exitCode", 0)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


def broken_container(pod: Mapping[str, Any], cfg: RepairConfig) -> Mapping[str, Any] | None:
    """The status of the init container that makes ``pod`` broken, or None (see ``matches_filter``)."""
    metadata = _mapping(pod.get("metadata"))
    if cfg.sidecar_annotation and cfg.sidecar_annotation not in _mapping(metadata.get("annotations")):
        return None
    wanted = cfg.init_container_name
    message = cfg.init_termination_message.strip()
    for container in _mapping(pod.get("status")).get("initContainerStatuses") or []:
        if not isinstance(container, Mapping) or (wanted and container.get("name") != wanted):
            continue
        current = _terminated(container, "state")
        if current is not None and (current.get("reason") == "Completed" or _exit_code(current) == 0):
            continue  # it succeeded now: never broken, whatever happened before
        last = _terminated(container, "lastState")
        if last is None:
            continue
        if message and message != str(last.get("message") or "").strip():
            continue
        if cfg.init_exit_code and cfg.init_exit_code != _exit_code(last):
            continue
        return container
    return None


def matches_filter(pod: Mapping[str, Any], cfg: RepairConfig) -> bool:
    """Whether ``pod`` raced the agent, by Istio's rules: it has the sidecar annotation (when one
    is configured) and an init container of the configured name whose current state is not a
    success (terminated Completed or exit 0), whose last termination exists, with a message equal
    to the configured one after trimming (empty matches any) and the configured exit code (0 = any)."""
    return broken_container(pod, cfg) is not None


def selected(pod: Mapping[str, Any], cfg: RepairConfig) -> bool:
    """Whether the configured label and field selectors select ``pod``."""
    labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
    return all(r.matches(labels) for r in cfg.label_selector) and all(r.matches(pod) for r in cfg.field_selector)


# ---- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Act:
    """Carry out ``mode`` on the pod."""

    mode: Mode
    reason: str


@dataclass(frozen=True)
class Skip:
    """The pod is broken but ``mode``'s work is already there (the label): counted as ``skip``."""

    mode: Mode
    reason: str


@dataclass(frozen=True)
class NoAction:
    """Nothing to do and nothing to count."""

    reason: str


Action = Act | Skip | NoAction


def pod_uid(pod: Mapping[str, Any]) -> str:
    return str(_mapping(pod.get("metadata")).get("uid") or "")


def decide_action(pod: Mapping[str, Any], cfg: RepairConfig, already_handled: Collection[str]) -> Action:
    """What to do with ``pod``: the first enabled mode (repair > delete > label) when it is broken
    and its uid was not handled before; a labelled pod is a Skip."""
    mode = cfg.mode
    if mode is None:
        return NoAction("repair is disabled" if not cfg.enabled else "no repair mode is enabled")
    uid = pod_uid(pod)
    if not uid:
        return NoAction("the pod has no metadata.uid")
    if uid in already_handled:
        return NoAction(f"pod uid {uid} was handled already")
    container = broken_container(pod, cfg)
    if container is None:
        return NoAction("the pod is not broken")
    last = _terminated(container, "lastState") or {}
    why = f"init container {container.get('name')} last exited {_exit_code(last)}"
    message = str(last.get("message") or "").strip()
    if message:
        why += f" ({message.splitlines()[0]})"
    if mode is Mode.LABEL and cfg.label_key in _mapping(_mapping(pod.get("metadata")).get("labels")):
        return Skip(mode, f"{why}; it has the label {cfg.label_key} already")
    return Act(mode, why)
