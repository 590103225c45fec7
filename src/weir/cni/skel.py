"""The CNI plugin protocol as one pure function: ``dispatch(env, stdin, handlers)``.

It reads the ``CNI_*`` environment and the network configuration, checks them against a table
of verbs (which variables each needs, which config versions allow it), calls the handler and
returns ``(stdout, exit_code)``. The entry point only has to pass ``os.environ`` and stdin in
and write the answer out, so the protocol is tested with a dict and bytes.

stdout carries only the protocol answer: a result after ADD, ``{cniVersion, supportedVersions}``
after VERSION, nothing after DEL, CHECK, STATUS and GC, and the spec's error object with exit 1
on any failure. A :class:`CniError` raised anywhere is printed as it is (never wrapped twice);
any other exception becomes ``Code.INTERNAL`` (999, libcni's ``ErrInternal``) with the
exception's type and text in ``details``, never a traceback. This module does no logging.

Required variables follow SPEC.md 1.1: ADD and CHECK need CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME
and CNI_PATH; DEL the same but CNI_NETNS; GC needs CNI_PATH; STATUS needs only CNI_COMMAND
(the spec makes CNI_PATH optional there, although Go's skel insists on it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

from weir.cni._value import Value
from weir.cni.spec import (
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    CniError,
    Code,
    NetConf,
    convert_result,
    decode_json,
    empty_result,
    is_supported,
    parse_cni_args,
    parse_netconf,
    valid_name,
    version_at_least,
)

VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
# SPEC 1.1.0 first named the key "cni.dev/attachments"; libcni sends both (containernetworking/cni#1101).
_LEGACY_ATTACHMENTS_KEY = "cni.dev/attachments"

_MAX_IFNAME_BYTES = 15  # IFNAMSIZ - 1


class Call(Value):
    """One plugin invocation, parsed: what a handler gets."""

    __slots__ = ("cni_args", "command", "container_id", "ifname", "netconf", "netns", "path", "valid_attachments")
    command: str
    container_id: str
    netns: str
    ifname: str
    cni_args: dict[str, str]
    path: list[str]
    netconf: NetConf
    valid_attachments: list[dict[str, str]]  # GC only

    def __init__(self, command: str, container_id: str, netns: str, ifname: str, cni_args: dict[str, str],
                 path: list[str], netconf: NetConf, valid_attachments: list[dict[str, str]] | None = None) -> None:
        self._set(command=command, container_id=container_id, netns=netns, ifname=ifname, cni_args=cni_args,
                  path=path, netconf=netconf, valid_attachments=[] if valid_attachments is None else valid_attachments)


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol
else:  # the plugin never needs typing at run time (it costs start-up)
    Protocol = object


class Handlers(Protocol):
    """What a plugin implements. Raise CniError to fail with a specific code."""

    def add(self, call: Call) -> dict[str, Any] | None:
        """Return a result (any supported version), or None to pass prevResult through."""

    def delete(self, call: Call) -> None: ...

    def check(self, call: Call) -> None: ...

    def status(self, call: Call) -> None: ...

    def gc(self, call: Call) -> None: ...


class _Verb(Value):
    __slots__ = ("min_version", "prints_result", "required", "run", "takes_attachments")
    required: tuple[str, ...]  # environment variables besides CNI_COMMAND, in the order reported
    min_version: str  # the first config cniVersion whose spec has this verb
    run: Callable[[Handlers, Call], object]
    prints_result: bool
    takes_attachments: bool

    def __init__(self, required: tuple[str, ...], min_version: str, run: Callable[[Handlers, Call], object],
                 prints_result: bool = False, takes_attachments: bool = False) -> None:
        self._set(required=required, min_version=min_version, run=run, prints_result=prints_result,
                  takes_attachments=takes_attachments)


_OLDEST = SUPPORTED_VERSIONS[0]
_ATTACHMENT_VARS = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")

VERBS: Mapping[str, _Verb] = {
    "ADD": _Verb(_ATTACHMENT_VARS, _OLDEST, lambda h, c: h.add(c), prints_result=True),
    "DEL": _Verb(("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"), _OLDEST, lambda h, c: h.delete(c)),
    "CHECK": _Verb(_ATTACHMENT_VARS, "0.4.0", lambda h, c: h.check(c)),
    "STATUS": _Verb((), "1.1.0", lambda h, c: h.status(c)),
    "GC": _Verb(("CNI_PATH",), "1.1.0", lambda h, c: h.gc(c), takes_attachments=True),
}


def dispatch(env: Mapping[str, str], stdin: bytes, handlers: Handlers) -> tuple[bytes, int]:
    """Run one CNI invocation; return what to write to stdout and the exit code."""
    try:
        return _run(env, stdin, handlers), 0
    except Exception as exc:
        error = CniError.from_exception(exc)
        return _encode(error.to_json(_answer_version(stdin))), 1


def _run(env: Mapping[str, str], stdin: bytes, handlers: Handlers) -> bytes:
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        return _encode(version_answer(stdin))
    if not command:
        raise CniError(Code.INVALID_ENVIRONMENT, "required env variables [CNI_COMMAND] missing")
    verb = VERBS.get(command)
    if verb is None:
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            f"unknown CNI_COMMAND: {command}",
            f"expected one of {', '.join([*VERBS, 'VERSION'])}",
        )
    missing = [name for name in verb.required if not env.get(name)]
    if missing:
        raise CniError(Code.INVALID_ENVIRONMENT, f"required env variables [{','.join(missing)}] missing")
    if "CNI_CONTAINERID" in verb.required:
        _check_container_id(env["CNI_CONTAINERID"])
    if "CNI_IFNAME" in verb.required:
        _check_ifname(env["CNI_IFNAME"])
    cni_args = parse_cni_args(env.get("CNI_ARGS", ""))

    netconf = parse_netconf(stdin)
    version = netconf.cni_version
    if not version_at_least(version, verb.min_version):
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"config version does not allow {command}",
            f"cniVersion is {version}; {command} needs {verb.min_version} or later",
        )
    # Parse prevResult before the handler acts, so a bad one fails the ADD with nothing done.
    prev_result = None
    if verb.prints_result and netconf.prev_result is not None:
        prev_result = convert_result(netconf.prev_result, version)
    call = Call(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        cni_args=cni_args,
        path=[d for d in env.get("CNI_PATH", "").split(os.pathsep) if d],
        netconf=netconf,
        valid_attachments=_valid_attachments(netconf.raw) if verb.takes_attachments else [],
    )
    answer = verb.run(handlers, call)
    if not verb.prints_result:
        return b""
    if answer is None:
        return _encode(prev_result if prev_result is not None else empty_result(version))
    if not isinstance(answer, dict):
        raise CniError(Code.INTERNAL, f"{command} handler returned {type(answer).__name__}, not a result object")
    return _encode(convert_result(answer, version))


def version_answer(stdin: bytes) -> dict[str, Any]:
    """The VERSION answer. Like Go's skel it never fails on its input: an empty, unreadable or
    unsupported ``{"cniVersion": ...}`` is answered in the latest version."""
    return {"cniVersion": _answer_version(stdin), "supportedVersions": list(SUPPORTED_VERSIONS)}


def _answer_version(stdin: bytes) -> str:
    """The config's cniVersion when this plugin speaks it, else the latest version."""
    try:
        obj = decode_json(stdin, "stdin")
    except CniError:
        return LATEST_VERSION
    version = obj.get("cniVersion") if isinstance(obj, dict) else None
    return version if isinstance(version, str) and is_supported(version) else LATEST_VERSION


def _check_container_id(container_id: str) -> None:
    # The same rule as network names (SPEC §2 "Container ID"); Go's skel checks it too.
    if not valid_name(container_id):
        raise CniError(
            Code.INVALID_ENVIRONMENT,
            f"invalid characters in CNI_CONTAINERID {container_id!r}",
            'a container id starts with a letter or digit, followed by letters, digits, "_", "." or "-"',
        )


def _check_ifname(ifname: str) -> None:
    reason = ""
    if len(ifname.encode()) > _MAX_IFNAME_BYTES:
        reason = f"longer than {_MAX_IFNAME_BYTES} bytes"
    elif ifname in (".", ".."):
        reason = 'is "." or ".."'
    elif any(ch in "/:" or ch.isspace() for ch in ifname):
        reason = 'contains "/", ":" or whitespace'
    if reason:
        raise CniError(Code.INVALID_ENVIRONMENT, f"invalid CNI_IFNAME {ifname!r}: {reason}")


def _valid_attachments(raw: Mapping[str, Any]) -> list[dict[str, str]]:
    """GC's list of attachments still in use. A missing list is an error, not "none are valid":
    reading it as empty would make the plugin clean up every pod."""
    key = VALID_ATTACHMENTS_KEY if VALID_ATTACHMENTS_KEY in raw else _LEGACY_ATTACHMENTS_KEY
    items = raw.get(key)
    if not isinstance(items, list):
        what = "missing" if items is None else "not a list"
        raise CniError(Code.INVALID_NETWORK_CONFIG, f'GC needs "{VALID_ATTACHMENTS_KEY}"; it is {what}')
    attachments = []
    for i, item in enumerate(items):
        if not (
            isinstance(item, dict) and isinstance(item.get("containerID"), str) and isinstance(item.get("ifname"), str)
        ):
            raise CniError(
                Code.INVALID_NETWORK_CONFIG,
                f'"{key}"[{i}] must be an object with string "containerID" and "ifname"',
                f"got {item!r}"[:200],
            )
        attachments.append({"containerID": item["containerID"], "ifname": item["ifname"]})
    return attachments


def _encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, indent=4).encode() + b"\n"
