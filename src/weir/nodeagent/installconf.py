"""CNI configuration files as the installer sees them: libcni's loading rules, Istio's edits of the
primary conflist, and the checks that say whether weir's entry is still in force. Pure: every
function takes file contents (a :class:`ConfDir` snapshot, bytes) and returns bytes or verdicts;
the driver (``installer.py``) does the reading and writing.

What it reproduces, and where from:

- **JSON as Go reads and writes it.** Istio unmarshals a conflist into ``map[string]any`` and
  writes it back with ``json.MarshalIndent(m, "", "  ")`` plus a newline: keys sorted, numbers as
  float64 (``1500``, ``1e+21``, ``1e-7``), ``<``, ``>``, ``&``, U+2028/U+2029 escaped, invalid
  UTF-8 and lone surrogates turned into U+FFFD. :func:`go_loads` and :func:`go_marshal` do the
  same, so weir's rewritten files are byte-identical to Istio's.
- **Which files count** (``getConfigFilenames``): libcni ``ConfFiles(dir, [".conf",
  ".conflist"])`` (Go's ``filepath.Ext``; directories skipped, hidden files not), sorted byte-wise;
  a ``.conf`` must decode as ``types.PluginConf`` with a non-empty ``type``; a ``.conflist`` must
  load with libcni v1.3's ``NetworkConfFromFile``, drop-ins included (see below).
- **libcni v1.3 drop-ins** (containernetworking/cni 4254258, "drop-in", in v1.3.0): for a
  ``.conflist`` only, unless ``loadOnlyInlinedPlugins`` is true (a JSON bool, or the string
  "true"/"false" in any case; any other value fails the list), libcni appends every ``*.conf``
  in ``<conf dir>/<network name>/`` (non-directories, file-name order) after the inline plugins.
  Each drop-in must be an object with a non-empty ``type`` or the *whole list* fails to load.
  ``plugins`` may then be absent (all plugins from drop-ins) but ``"plugins": []`` is an error,
  and a list with no plugin at all fails. ``name`` and ``cniVersion`` of a drop-in are replaced
  by the list's at execution (``buildOneConfig``), so weir writes its drop-in without
  ``cniVersion``. A single-plugin ``.conf`` never loads drop-ins.
- **Istio's edits** (``insertCNIConfig``): the entry loses its ``cniVersion``; a single ``.conf``
  becomes ``{"name": "k8s-pod-network", "cniVersion": "0.3.1", "plugins": [conf, entry]}`` (the
  conf loses its ``cniVersion``); in a list the first plugin of our type is removed and the entry
  appended last.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

CONF_EXTENSIONS = (".conf", ".conflist")
CONVERTED_NAME = "k8s-pod-network"  # Istio's name for a .conf turned into a list
CONVERTED_VERSION = "0.3.1"


class ConfError(ValueError):
    """A CNI config file cannot be used (not JSON, wrong shape); the message names the file."""


class Mode(enum.Enum):
    """Where weir's plugin entry lives."""

    STANDALONE = "standalone"  # our own single-plugin file (CHAINED_CNI_PLUGIN=false)
    CHAINED = "chained"        # appended to the primary conflist (Istio's default)
    OWNED = "owned"            # a copy of the primary plus our entry, in our own file sorting first
    DROPIN = "dropin"          # <conf dir>/<network>/<type>.conf, loaded by libcni >= 1.3


# ---- JSON the way Go reads and writes it ----------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_GO_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")
_EXPONENT = re.compile(r"(-?[0-9.]+)e([+-])([0-9]+)")


def _go_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} out of range of float64")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"invalid literal {name}")


def _valid_text(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_valid_text(v) for v in value]
    if isinstance(value, dict):
        return {_valid_text(k): _valid_text(v) for k, v in value.items()}
    return value


def go_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Decode like Go's ``json.Unmarshal`` into ``any``: numbers are float64, NaN/Infinity and
    out-of-range numbers are errors, invalid UTF-8 becomes U+FFFD. Raises :class:`ConfError`."""
    try:
        return _valid_text(json.loads(data.decode("utf-8", errors="replace"), parse_float=_go_float,
                                      parse_int=_go_float, parse_constant=_no_constant))
    except (ValueError, RecursionError) as exc:
        raise ConfError(f"{source}: not valid JSON: {exc}") from None


def parse_object(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """A JSON object (``map[string]any``), or :class:`ConfError`."""
    value = go_loads(data, source)
    if not isinstance(value, dict):
        raise ConfError(f"{source}: must be a JSON object, not {_json_kind(value)}")
    return value


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", float: "a number", bool: "a boolean"}.get(type(value), "null")


def _go_string(text: str) -> str:
    return _GO_ESCAPE_RE.sub(lambda m: _GO_ESCAPES[m.group()], json.dumps(text, ensure_ascii=False))


def _go_number(value: float) -> str:
    """encoding/json's float64 format: shortest digits, 'e' form below 1e-6 and from 1e21."""
    if math.isnan(value) or math.isinf(value):
        raise ConfError(f"unsupported number {value!r}")
    size = abs(value)
    if size != 0 and (size < 1e-6 or size >= 1e21):
        match = _EXPONENT.fullmatch(repr(value))
        assert match is not None, repr(value)  # repr() is in 'e' form in both ranges
        mantissa, sign, exponent = match.groups()
        if sign == "-" and len(exponent) == 2 and exponent[0] == "0":
            exponent = exponent[1]  # Go cleans e-09 up to e-9
        return f"{mantissa}e{sign}{exponent}"
    return format(Decimal(repr(value)).normalize(), "f")


def _encode(value: Any, out: list[str], indent: str, sort_keys: bool) -> None:
    if value is None:
        out.append("null")
    elif value is True or value is False:
        out.append("true" if value else "false")
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif isinstance(value, int | float):
        out.append(_go_number(float(value)))
    elif isinstance(value, Mapping):
        if not value:
            out.append("{}")
            return
        keys = sorted(value, key=lambda k: str(k).encode("utf-8")) if sort_keys else list(value)
        inner = indent + "  "
        out.append("{\n")
        for i, key in enumerate(keys):
            out.append(f"{inner}{_go_string(str(key))}: ")
            _encode(value[key], out, inner, sort_keys)
            out.append(",\n" if i + 1 < len(keys) else "\n")
        out.append(indent + "}")
    elif isinstance(value, list | tuple):
        if not value:
            out.append("[]")
            return
        inner = indent + "  "
        out.append("[\n")
        for i, item in enumerate(value):
            out.append(inner)
            _encode(item, out, inner, sort_keys)
            out.append(",\n" if i + 1 < len(value) else "\n")
        out.append(indent + "]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def go_marshal(value: Any, *, sort_keys: bool = True) -> bytes:
    """``json.MarshalIndent(value, "", "  ")`` plus a newline. ``sort_keys=True`` for a Go map
    (how Istio rewrites conflists); ``False`` keeps insertion order, as for a Go struct."""
    out: list[str] = []
    _encode(value, out, "", sort_keys)
    out.append("\n")
    return "".join(out).encode("utf-8")


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, type-strict (``true`` is not ``1``); object key order ignored."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def normalized(value: Any) -> Any:
    """``value`` as it reads back from a file (numbers as float64, ...)."""
    return go_loads(go_marshal(value))


# ---- a snapshot of the conf dir --------------------------------------------------------------------


@dataclass(frozen=True)
class ConfDir:
    """What the driver read from the CNI conf dir. ``files``: top-level file name -> content
    (``None``: unreadable). ``dropins``: network name -> its drop-in ``*.conf`` files (``None``:
    the directory could not be read; a missing directory is an empty mapping)."""

    files: Mapping[str, bytes | None] = field(default_factory=dict)
    dropins: Mapping[str, Mapping[str, bytes | None] | None] = field(default_factory=dict)


def go_ext(name: str) -> str:
    """Go's ``filepath.Ext``: from the last dot of the base name (``.conf`` for ``.conf``)."""
    dot = name.rfind(".")
    return name[dot:] if dot >= 0 and "/" not in name[dot:] else ""


def is_conf_name(name: str) -> bool:
    return go_ext(name) in CONF_EXTENSIONS


def dropin_networks(files: Mapping[str, bytes | None]) -> set[str]:
    """Network names of the ``.conflist`` files: the drop-in directories a reader must list."""
    names: set[str] = set()
    for name, data in files.items():
        if go_ext(name) == ".conflist" and data is not None:
            try:
                obj = go_loads(data, name)
            except ConfError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("name"), str):
                names.add(obj["name"])
    return names


# ---- libcni's rules -------------------------------------------------------------------------------

_Check = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(x is None or isinstance(x, str) for x in v)


def _struct(schema: Mapping[str, _Check]) -> _Check:
    return lambda v: isinstance(v, dict) and _struct_error(v, schema) is None


def _struct_error(obj: Mapping[str, Any], schema: Mapping[str, _Check]) -> str | None:
    """Go's ``json.Unmarshal`` into a struct: keys match fields case-insensitively, ``null``
    leaves a field alone, any other value of the wrong type is an error."""
    folded = {name.casefold(): name for name in schema}
    for key, value in obj.items():
        name = folded.get(key.casefold()) if isinstance(key, str) else None
        if name is not None and value is not None and not schema[name](value):
            return f"{key!r} has the wrong type ({_json_kind(value)})"
    return None


def _struct_field(obj: Mapping[str, Any], name: str) -> Any:
    """The value Go would decode into field ``name``: the last matching non-null key."""
    found: Any = None
    for key, value in obj.items():
        if isinstance(key, str) and key.casefold() == name.casefold() and value is not None:
            found = value
    return found


_PLUGIN_CONF: dict[str, _Check] = {  # containernetworking/cni pkg/types.PluginConf (v1.3)
    "cniVersion": _is_str,
    "name": _is_str,
    "type": _is_str,
    "capabilities": lambda v: isinstance(v, dict) and all(x is None or isinstance(x, bool) for x in v.values()),
    "ipam": _struct({"type": _is_str}),
    "dns": _struct({"nameservers": _str_list, "domain": _is_str, "search": _str_list, "options": _str_list}),
    "prevResult": lambda v: isinstance(v, dict),
    "cni.dev/valid-attachments": lambda v: isinstance(v, list) and all(
        x is None or _struct({"containerID": _is_str, "ifname": _is_str})(x) for x in v),
}
_VERSION_PART = re.compile(r"[+-]?[0-9]+")


def plugin_conf_error(obj: Any) -> str | None:
    """libcni ``NetworkPluginConfFromBytes``: a ``types.PluginConf`` with a non-empty ``type``."""
    if not isinstance(obj, dict):
        return f"a plugin configuration must be a JSON object, not {_json_kind(obj)}"
    problem = _struct_error(obj, _PLUGIN_CONF)
    if problem:
        return problem
    kind = _struct_field(obj, "type")
    return None if isinstance(kind, str) and kind else "missing 'type'"


def _version_ok(text: str) -> bool:
    """libcni ``version.ParseVersion``: "" or one to three integer parts."""
    return text == "" or (len(text.split(".")) <= 3 and all(_VERSION_PART.fullmatch(p) for p in text.split(".")))


def read_bool(obj: Mapping[str, Any], key: str) -> bool:
    """libcni's ``readBool``: absent is false; a bool, or "true"/"false" in any case."""
    if key not in obj:
        return False
    value = obj[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ConfError(f"invalid value {value!r} for {key}")


def list_error(obj: Any, dropins: Mapping[str, bytes | None] | None) -> str | None:
    """libcni v1.3 ``NetworkConfFromFile`` for a parsed ``.conflist`` whose drop-in directory
    holds ``dropins`` (file name -> content). ``None`` when the list loads."""
    if not isinstance(obj, dict):
        return f"must be a JSON object, not {_json_kind(obj)}"
    if "name" not in obj:
        return "no name"
    if not isinstance(obj["name"], str):
        return f"invalid name type ({_json_kind(obj['name'])})"
    if "cniVersion" in obj and not isinstance(obj["cniVersion"], str):
        return f"invalid cniVersion type ({_json_kind(obj['cniVersion'])})"
    if "cniVersions" in obj:
        versions = obj["cniVersions"]
        if not isinstance(versions, list) or not all(isinstance(v, str) and _version_ok(v) for v in versions):
            return "invalid cniVersions"
        if not _version_ok(obj.get("cniVersion", "")):
            return "invalid cniVersion"
    try:
        for key in ("disableCheck", "disableGC"):
            read_bool(obj, key)
        inline_only = read_bool(obj, "loadOnlyInlinedPlugins")
    except ConfError as exc:
        return str(exc)
    count = 0
    if "plugins" in obj:
        plugins = obj["plugins"]
        if not isinstance(plugins, list):
            return f"invalid 'plugins' type ({_json_kind(plugins)})"
        if not plugins:
            return "no plugins in list"
        for i, plugin in enumerate(plugins):
            problem = plugin_conf_error(plugin)
            if problem:
                return f"plugin {i}: {problem}"
        count = len(plugins)
    elif inline_only:
        return "loadOnlyInlinedPlugins is true, and no 'plugins' key"
    if not inline_only:
        if dropins is None:
            return f"cannot read the drop-in directory {obj['name']!r}"
        for name in sorted(dropins, key=os.fsencode):
            data = dropins[name]
            if data is None:
                return f"cannot read drop-in {obj['name']}/{name}"
            try:
                problem = plugin_conf_error(go_loads(data, name))
            except ConfError as exc:
                problem = str(exc)
            if problem:
                return f"drop-in {obj['name']}/{name}: {problem}"
            count += 1
    return None if count else "no plugin configs found"


def config_error(conf: ConfDir, name: str) -> str | None:
    """Why ``name`` is not a usable config (Istio's ``getConfigFilenames`` rules), or ``None``."""
    data = conf.files.get(name)
    if data is None:
        return "missing or unreadable"
    try:
        obj = go_loads(data, name)
    except ConfError as exc:
        return str(exc)
    if go_ext(name) == ".conflist":
        network = obj.get("name") if isinstance(obj, dict) else None
        return list_error(obj, conf.dropins.get(network, {}) if isinstance(network, str) else {})
    return plugin_conf_error(obj)


def valid_configs(conf: ConfDir) -> list[str]:
    """The usable ``.conf``/``.conflist`` names, highest priority first (byte-wise order)."""
    names = sorted((n for n in conf.files if is_conf_name(n)), key=os.fsencode)
    return [n for n in names if config_error(conf, n) is None]


def resolve_primary(conf: ConfDir, conf_name: str = "", exclude: Collection[str] = ()) -> str | None:
    """Istio's ``getCNIConfigFilepath`` for a chained plugin, without the waiting: the pinned
    ``conf_name`` if it exists (``X.conf`` falls back to ``X.conflist`` and the reverse; the file
    need not be valid), else the first valid config. ``None`` means: wait for one. Names in
    ``exclude`` (weir's own files) never count."""
    if conf_name:
        candidates = [conf_name]
        if conf_name.endswith(".conf"):
            candidates.append(conf_name + "list")
        elif conf_name.endswith(".conflist"):
            candidates.append(conf_name[: -len("list")])
        return next((c for c in candidates if c in conf.files and c not in exclude), None)
    return next((n for n in valid_configs(conf) if n not in exclude), None)


# ---- Istio's edits ---------------------------------------------------------------------------------


def _plugins(conf: Mapping[str, Any], source: str) -> list[Any]:
    if "plugins" not in conf:
        raise ConfError(f"{source}: plugins field is missing")
    plugins = conf["plugins"]
    if not isinstance(plugins, list):
        raise ConfError(f"{source}: plugins field is not a list")
    return plugins


def _entry_index(plugins: list[Any], plugin_type: str, source: str) -> int | None:
    """The first plugin of ``plugin_type`` (plugins before it must be objects, as Istio's loop)."""
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise ConfError(f"{source}: plugin {i} is not a JSON object")
        if plugin.get("type") == plugin_type:
            return i
    return None


def as_list(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A single-plugin config as Istio converts it (a list stays as it is)."""
    if "type" not in conf:
        return dict(conf)
    plugin = {k: v for k, v in conf.items() if k != "cniVersion"}
    return {"name": CONVERTED_NAME, "cniVersion": CONVERTED_VERSION, "plugins": [plugin]}


def insert_entry(existing: bytes, entry: Mapping[str, Any], plugin_type: str, source: str = "<primary>") -> bytes:
    """Istio's ``insertCNIConfig``: ``existing`` with ``entry`` appended last (an older entry of
    ``plugin_type`` removed; a single ``.conf`` converted to a list), re-marshalled sorted."""
    conf = as_list(parse_object(existing, source))
    plugins = list(_plugins(conf, source))
    index = _entry_index(plugins, plugin_type, source)
    if index is not None:
        del plugins[index]
    plugins.append({k: v for k, v in entry.items() if k != "cniVersion"})
    conf["plugins"] = plugins
    return go_marshal(conf)


def remove_entry(existing: bytes, plugin_type: str, source: str = "<primary>") -> bytes | None:
    """``existing`` without its first ``plugin_type`` plugin, re-marshalled as Istio's cleanup
    does; ``None`` when it holds no such plugin (then there is nothing to rewrite)."""
    conf = parse_object(existing, source)
    plugins = list(_plugins(conf, source))
    index = _entry_index(plugins, plugin_type, source)
    if index is None:
        return None
    del plugins[index]
    conf["plugins"] = plugins
    return go_marshal(conf)


def find_entry(data: bytes | None, plugin_type: str) -> dict[str, Any] | None:
    """The first ``plugin_type`` plugin of a conflist, or ``None`` (also for unusable content)."""
    if data is None:
        return None
    try:
        conf = parse_object(data)
        plugins = _plugins(conf, "")
        index = _entry_index(plugins, plugin_type, "")
    except ConfError:
        return None
    return None if index is None else dict(plugins[index])


def is_single_of(data: bytes | None, plugin_type: str) -> bool:
    """A single-plugin config whose top-level ``type`` is ``plugin_type`` (a standalone file)."""
    try:
        return data is not None and parse_object(data).get("type") == plugin_type
    except ConfError:
        return False


def same_content(a: bytes | None, b: bytes | None) -> bool:
    """Both parse and are equal as JSON."""
    if a is None or b is None:
        return False
    try:
        return same_json(go_loads(a), go_loads(b))
    except ConfError:
        return False


# ---- is weir's entry in force? ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """``problem``: why the installation must be redone (``None``: it is in force)."""

    problem: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None


def _without_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "cniVersion"}


def _plugin_types(obj: Mapping[str, Any]) -> list[Any]:
    if "type" in obj:
        return [obj["type"]]
    plugins = obj.get("plugins")
    return [p.get("type") for p in plugins if isinstance(p, dict)] if isinstance(plugins, list) else []


def check_config(conf: ConfDir, *, mode: Mode, target: str, plugin_type: str, conf_name: str = "",
                 owned_filename: str = "", desired: Mapping[str, Any] | None = None,
                 exclude: Collection[str] = ()) -> Verdict:
    """Istio's ``checkValidCNIConfig``. ``target`` is the file that holds (or is) the entry;
    ``desired`` the entry as it should be (``None``: presence is enough, as Istio checks).
    A higher-priority file preempts the target unless ``conf_name`` pins it (or standalone)."""
    valid = valid_configs(conf)
    if not valid:
        return Verdict("no valid CNI config (.conf/.conflist) in the conf dir")
    first = valid[0]
    want = normalized(dict(desired)) if desired is not None else None
    if mode is Mode.OWNED:
        return _check_owned(conf, first, plugin_type, conf_name, owned_filename, want, exclude)
    if mode is Mode.DROPIN:
        return _check_dropin(conf, first, target, plugin_type, conf_name, want, exclude)
    warnings: list[str] = []
    if first != target:
        message = f"CNI config file {target} preempted by {first}"
        if not conf_name and mode is Mode.CHAINED:
            return Verdict(message)
        warnings.append(message)
    data = conf.files.get(target)
    if target not in conf.files:
        return Verdict(f"CNI config file removed: {target}", tuple(warnings))
    try:
        obj = parse_object(data if data is not None else b"", target)
        if mode is Mode.STANDALONE:
            if obj.get("type") != plugin_type:
                return Verdict(f"{plugin_type} CNI config file modified: {target}", tuple(warnings))
            if want is not None and not same_json(obj, want):
                return Verdict(f"{target} differs from the desired {plugin_type} config", tuple(warnings))
            return Verdict(None, tuple(warnings))
        plugins = _plugins(obj, target)
        index = _entry_index(plugins, plugin_type, target)
    except ConfError as exc:
        return Verdict(str(exc), tuple(warnings))
    if index is None:
        return Verdict(f"{plugin_type} CNI config removed from CNI config file: {target}", tuple(warnings))
    if want is not None and not same_json(_without_version(plugins[index]), _without_version(want)):
        return Verdict(f"the {plugin_type} entry in {target} differs from the desired one", tuple(warnings))
    return Verdict(None, tuple(warnings))


def _check_owned(conf: ConfDir, first: str, plugin_type: str, conf_name: str, owned: str,
                 want: Mapping[str, Any] | None, exclude: Collection[str]) -> Verdict:
    if first != owned:
        state = "is missing or invalid" if config_error(conf, owned) else "is not the highest-priority config"
        return Verdict(f"weir's own CNI config {owned} {state} (the runtime uses {first})")
    try:
        obj = parse_object(conf.files.get(owned) or b"", owned)
        if _entry_index(_plugins(obj, owned), plugin_type, owned) is None:
            return Verdict(f"{plugin_type} plugin not found in {owned}")
        primary = resolve_primary(conf, conf_name, exclude={owned, *exclude})
        if primary is None:
            return Verdict()  # nothing to compare with: the copy stands in for the absent primary
        source = conf.files.get(primary) or b""
        if want is not None:
            if not same_json(obj, go_loads(insert_entry(source, want, plugin_type, primary))):
                return Verdict(f"{owned} is not the primary {primary} plus the {plugin_type} entry")
            return Verdict()
        present = set(map(str, _plugin_types(obj)))
        missing = [t for t in _plugin_types(parse_object(source, primary)) if t not in present]
    except ConfError as exc:
        return Verdict(str(exc))
    if missing:
        return Verdict(f"plugin of type {missing[0]} from the primary {primary} is missing in {owned}")
    return Verdict()


def dropin_target(network: str, plugin_type: str) -> str:
    return f"{network}/{plugin_type}.conf"


def dropin_network(data: bytes, source: str) -> str:
    """The network name of a primary that can take drop-ins; :class:`ConfError` when it cannot
    (not a list, odd name, ``loadOnlyInlinedPlugins`` true)."""
    obj = parse_object(data, source)
    if "type" in obj and "plugins" not in obj:
        raise ConfError(f"{source}: a single-plugin config never loads drop-ins")
    network = obj.get("name")
    if not isinstance(network, str) or not network or "/" in network or network in (".", ".."):
        raise ConfError(f"{source}: network name {network!r} cannot name a drop-in directory")
    if read_bool(obj, "loadOnlyInlinedPlugins"):
        raise ConfError(f"{source}: loadOnlyInlinedPlugins is true, so libcni ignores drop-ins")
    return network


def _check_dropin(conf: ConfDir, first: str, target: str, plugin_type: str, conf_name: str,
                  want: Mapping[str, Any] | None, exclude: Collection[str]) -> Verdict:
    primary = resolve_primary(conf, conf_name, exclude=exclude)
    if primary is None:
        return Verdict("no primary CNI config to add the drop-in to")
    warnings: list[str] = []
    if first != primary:
        message = f"CNI config file {primary} preempted by {first}"
        if not conf_name:
            return Verdict(message)
        warnings.append(message)
    if go_ext(primary) != ".conflist":
        return Verdict(f"{primary} is not a .conflist: libcni loads drop-ins only for lists", tuple(warnings))
    try:
        network = dropin_network(conf.files.get(primary) or b"", primary)
    except ConfError as exc:
        return Verdict(str(exc), tuple(warnings))
    expected = dropin_target(network, plugin_type)
    if target != expected:
        return Verdict(f"the drop-in belongs at {expected}, not {target}", tuple(warnings))
    if find_entry(conf.files.get(primary), plugin_type) is not None:
        warnings.append(f"{primary} also holds an inline {plugin_type} plugin: it runs twice")
    data = (conf.dropins.get(network) or {}).get(f"{plugin_type}.conf")
    if data is None:
        return Verdict(f"drop-in {expected} is missing", tuple(warnings))
    try:
        obj = parse_object(data, expected)
    except ConfError as exc:
        return Verdict(str(exc), tuple(warnings))
    if obj.get("type") != plugin_type:
        return Verdict(f"drop-in {expected} is not a {plugin_type} config", tuple(warnings))
    if want is not None and not same_json(_without_version(obj), _without_version(want)):
        return Verdict(f"drop-in {expected} differs from the desired one", tuple(warnings))
    return Verdict(None, tuple(warnings))


def ours(conf: ConfDir, plugin_type: str, also: Iterable[str] = ()) -> frozenset[str]:
    """File names that are weir's own (single configs of our type, plus ``also``): never a primary."""
    names = {n for n, data in conf.files.items() if is_conf_name(n) and is_single_of(data, plugin_type)}
    return frozenset(names | {n for n in also if n})
