"""The CNI specification as values: versions, error codes, network configuration, results, CNI_ARGS.

Pure and standard-library only. Everything malformed becomes a :class:`CniError` that carries
the spec's error code and names the field, so ``skel.py`` prints it as the spec's error JSON.
This module knows nothing of environment variables, stdin/stdout, the node agent or netns.

Supported spec versions are 0.3.0 to 1.1.0, which share one result format (interfaces, ips,
routes, dns). The only difference between them that a chained plugin sees is that up to 0.4.0
each ``ips`` entry carries ``"version": "4"|"6"`` and from 1.0.0 it does not.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from enum import IntEnum

from weir.cni._value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
_UNVERSIONED_IPS_FROM = "1.0.0"  # SPEC 1.0.0 dropped "version" from ips entries

# Network names and container ids: an alphanumeric, then alphanumerics, "_", "." or "-" (SPEC §1).
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")


class Code(IntEnum):
    """Error codes: 0-99 are the spec's well-known codes, 100+ are weir's own."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_NETWORK_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50  # STATUS: cannot serve ADD
    LIMITED_CONNECTIVITY = 51  # STATUS: cannot serve ADD, existing pods may be affected
    CAPTURE_FAILED = 100  # the node agent could not program the pod's capture rules
    RULES_DRIFTED = 101  # CHECK: the pod's rules differ from what weir installed
    AGENT_ERROR = 102  # the node agent answered with an error or could not be reached
    INTERNAL = 999  # an unexpected exception; the same number as libcni's types.ErrInternal


class CniError(Exception):
    """The one error type of the CNI protocol: a code, a short message and optional details.

    Raise it anywhere below ``skel.dispatch``; the dispatcher prints it unchanged (never wraps
    it again). Retry decisions belong to the code, never to the message text.
    """

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def __str__(self) -> str:
        return f"{self.msg}; {self.details}" if self.details else self.msg

    def __repr__(self) -> str:
        return f"CniError({self.code!r}, {self.msg!r}, {self.details!r})"

    def to_json(self, cni_version: str) -> dict[str, Any]:
        """The spec's error object; ``details`` is left out when empty."""
        out: dict[str, Any] = {"cniVersion": cni_version, "code": int(self.code), "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_exception(cls, exc: BaseException) -> CniError:
        """``exc`` itself when it is a CniError, else an INTERNAL error carrying its text."""
        if isinstance(exc, CniError):
            return exc
        return cls(Code.INTERNAL, "unexpected error in weir-cni", f"{type(exc).__name__}: {exc}")


# ---- versions ------------------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; like libcni, ``"1"`` and ``"1.0"`` fill the rest with 0."""
    parts = text.split(".") if isinstance(text, str) else []
    if not 1 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise CniError(Code.DECODE_FAILURE, f"invalid version {text!r}", "expected MAJOR.MINOR.PATCH")
    numbers = [int(p) for p in parts] + [0] * (3 - len(parts))
    return numbers[0], numbers[1], numbers[2]


def version_at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def is_supported(version: object) -> bool:
    return isinstance(version, str) and version in SUPPORTED_VERSIONS


def require_supported(version: str, what: str = "cniVersion") -> None:
    """Raise INCOMPATIBLE_VERSION naming ``version`` unless this plugin speaks it."""
    if not is_supported(version):
        raise CniError(
            Code.INCOMPATIBLE_VERSION,
            f"unsupported {what} {version!r}",
            f"this plugin supports {', '.join(SUPPORTED_VERSIONS)}",
        )


# ---- network configuration -----------------------------------------------------------------------


class NetConf(Value):
    """One plugin's network configuration as the runtime sent it on stdin.

    ``raw`` holds every key exactly as given (unknown keys included: runtimes and other plugins
    pass them through); the other fields are the parsed, validated well-known ones.
    """

    __slots__ = ("cni_version", "name", "prev_result", "raw", "runtime_config", "type")
    cni_version: str
    name: str
    type: str
    raw: dict[str, Any]
    prev_result: dict[str, Any] | None
    runtime_config: dict[str, Any]

    def __init__(self, cni_version: str, name: str, type: str, raw: dict[str, Any],
                 prev_result: dict[str, Any] | None = None, runtime_config: dict[str, Any] | None = None) -> None:
        self._set(cni_version=cni_version, name=name, type=type, raw=raw, prev_result=prev_result,
                  runtime_config={} if runtime_config is None else runtime_config)


def decode_json(data: bytes | str, what: str) -> Any:
    """``json.loads`` whose failures are DECODE_FAILURE errors."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CniError(Code.DECODE_FAILURE, f"{what} is not valid JSON", str(exc) or type(exc).__name__) from None


def parse_netconf(stdin: bytes) -> NetConf:
    """Parse the network configuration a runtime writes to the plugin's stdin."""
    obj = decode_json(stdin, "network configuration")
    if not isinstance(obj, dict):
        raise CniError(Code.INVALID_NETWORK_CONFIG, f"network configuration must be a JSON object, not {_kind(obj)}")
    version = _config_string(obj, "cniVersion")
    require_supported(version)
    name = _config_string(obj, "name")
    if not valid_name(name):
        raise CniError(
            Code.INVALID_NETWORK_CONFIG,
            f"invalid network name {name!r}",
            'a name starts with a letter or digit, followed by letters, digits, "_", "." or "-"',
        )
    plugin_type = _config_string(obj, "type")
    prev_result = obj.get("prevResult")
    if prev_result is not None and not isinstance(prev_result, dict):
        raise CniError(Code.INVALID_NETWORK_CONFIG, f'"prevResult" must be an object, not {_kind(prev_result)}')
    runtime_config = obj.get("runtimeConfig")
    if runtime_config is None:
        runtime_config = {}
    elif not isinstance(runtime_config, dict):
        raise CniError(Code.INVALID_NETWORK_CONFIG, f'"runtimeConfig" must be an object, not {_kind(runtime_config)}')
    return NetConf(version, name, plugin_type, obj, prev_result, runtime_config)


def valid_name(text: str) -> bool:
    """Whether ``text`` may be a network name or container id (SPEC §1 and §2)."""
    return _NAME_RE.fullmatch(text) is not None


def _config_string(obj: Mapping[str, Any], key: str) -> str:
    if key not in obj:
        raise CniError(Code.INVALID_NETWORK_CONFIG, f'network configuration has no "{key}"')
    value = obj[key]
    if not isinstance(value, str):
        raise CniError(Code.INVALID_NETWORK_CONFIG, f'"{key}" must be a string, not {_kind(value)}')
    if not value:
        raise CniError(Code.INVALID_NETWORK_CONFIG, f'"{key}" must not be empty')
    return value


def _kind(value: object) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


# ---- results -------------------------------------------------------------------------------------


def empty_result(version: str) -> dict[str, Any]:
    """What a chained plugin prints after an ADD that had no prevResult."""
    return {"cniVersion": version}


def convert_result(result: Mapping[str, Any], to_version: str) -> dict[str, Any]:
    """Validate a result of any supported version and return a copy in ``to_version``.

    Every field is kept, known or not. ``ips[].version`` is recomputed from the address for
    versions before 1.0.0 (libcni does the same, ignoring what was written) and dropped from
    1.0.0 on. A result without ``cniVersion`` is accepted: the format is the same either way.
    Garbage raises DECODE_FAILURE naming the field; a result version this plugin does not
    speak raises INCOMPATIBLE_VERSION.
    """
    require_supported(to_version)
    if not isinstance(result, Mapping):
        raise CniError(Code.DECODE_FAILURE, f"a result must be a JSON object, not {_kind(result)}")
    source = result.get("cniVersion")
    if source is not None:
        if not isinstance(source, str):
            raise _bad_result("cniVersion", source, "must be a string")
        require_supported(source, "result cniVersion")
    body = copy.deepcopy({k: v for k, v in result.items() if k != "cniVersion"})
    interfaces = _result_list(body, "interfaces")
    for i, iface in enumerate(interfaces):
        _check_object(iface, f"interfaces[{i}]")
        for key in ("name", "mac", "sandbox"):
            _check_optional_str(iface, key, f"interfaces[{i}]")
    versioned = not version_at_least(to_version, _UNVERSIONED_IPS_FROM)
    ips = _result_list(body, "ips")
    for i, ip in enumerate(ips):
        ips[i] = _convert_ip(ip, f"ips[{i}]", len(interfaces), versioned)
    for i, route in enumerate(_result_list(body, "routes")):
        where = f"routes[{i}]"
        _check_object(route, where)
        _check_cidr(route.get("dst"), f"{where}.dst")
        if route.get("gw") is not None:
            _check_ip(route["gw"], f"{where}.gw")
    if body.get("dns") is not None:
        _check_dns(body["dns"])
    return {"cniVersion": to_version, **body}


def _convert_ip(ip: Any, where: str, interface_count: int, versioned: bool) -> dict[str, Any]:
    _check_object(ip, where)
    family = _check_cidr(ip.get("address"), f"{where}.address")
    if ip.get("gateway") is not None:
        _check_ip(ip["gateway"], f"{where}.gateway")
    index = ip.get("interface")
    if index is not None and (
        not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < interface_count
    ):
        raise _bad_result(f"{where}.interface", index, f"is not an index into the {interface_count} interfaces")
    rest = {k: v for k, v in ip.items() if k != "version"}
    return {"version": str(family), **rest} if versioned else rest


def _check_dns(dns: Any) -> None:
    _check_object(dns, "dns")
    _check_optional_str(dns, "domain", "dns")
    for key in ("nameservers", "search", "options"):
        values = dns.get(key)
        if values is None:
            continue
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _bad_result(f"dns.{key}", values, "must be a list of strings")


def _result_list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad_result(key, value, f"must be a list, not {_kind(value)}")
    return value


def _check_object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise _bad_result(where, value, f"must be an object, not {_kind(value)}")


def _check_optional_str(obj: Mapping[str, Any], key: str, where: str) -> None:
    if obj.get(key) is not None and not isinstance(obj[key], str):
        raise _bad_result(f"{where}.{key}", obj[key], "must be a string")


def _check_cidr(value: Any, where: str) -> int:
    """Check an address with a prefix length, as Go's net.ParseCIDR takes it; return 4 or 6."""
    import ipaddress  # only results need it; DEL, CHECK, STATUS and GC start without it

    if isinstance(value, str):
        _address, slash, prefix = value.partition("/")
        if slash and prefix.isascii() and prefix.isdigit():
            try:
                return ipaddress.ip_interface(value).version
            except ValueError:
                pass
    raise _bad_result(where, value, "is not an address in CIDR form (address/prefix-length)")


def _check_ip(value: Any, where: str) -> None:
    import ipaddress

    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            pass
        else:
            return
    raise _bad_result(where, value, "is not an IP address")


def _bad_result(where: str, value: object, reason: str) -> CniError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return CniError(Code.DECODE_FAILURE, f"invalid result: {where} {reason}", f"got {shown}")


# ---- CNI_ARGS ------------------------------------------------------------------------------------

K8S_POD_NAMESPACE = "K8S_POD_NAMESPACE"
K8S_POD_NAME = "K8S_POD_NAME"
K8S_POD_UID = "K8S_POD_UID"
K8S_POD_INFRA_CONTAINER_ID = "K8S_POD_INFRA_CONTAINER_ID"


def parse_cni_args(text: str) -> dict[str, str]:
    """Parse ``CNI_ARGS`` (``K=V;K=V``). Every key is collected, as with ``IgnoreUnknown=1``.

    As in libcni's ``LoadArgs``, each pair holds exactly one ``=`` and empty pairs are errors;
    a later duplicate key wins. A malformed pair raises INVALID_ENVIRONMENT naming it.
    """
    args: dict[str, str] = {}
    if not text:
        return args
    for pair in text.split(";"):
        key, sep, value = pair.partition("=")
        if not sep or not key or "=" in value:
            raise CniError(
                Code.INVALID_ENVIRONMENT,
                f"CNI_ARGS: invalid pair {pair!r}",
                'expected KEY=VALUE pairs separated by ";"',
            )
        args[key] = value
    return args


class K8sPodArgs(Value):
    """The pod identity kubelet and containerd put in CNI_ARGS."""

    __slots__ = ("infra_container_id", "name", "namespace", "uid")
    namespace: str
    name: str
    uid: str  # older runtimes do not send it
    infra_container_id: str

    def __init__(self, namespace: str, name: str, uid: str = "", infra_container_id: str = "") -> None:
        self._set(namespace=namespace, name=name, uid=uid, infra_container_id=infra_container_id)


def k8s_pod_args(args: Mapping[str, str]) -> K8sPodArgs | None:
    """The pod identity in parsed CNI_ARGS, or None when namespace or name is absent (no pod)."""
    namespace = args.get(K8S_POD_NAMESPACE, "")
    name = args.get(K8S_POD_NAME, "")
    if not namespace or not name:
        return None
    return K8sPodArgs(namespace, name, args.get(K8S_POD_UID, ""), args.get(K8S_POD_INFRA_CONTAINER_ID, ""))
