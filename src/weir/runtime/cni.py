"""The conflist executor: runs a CNI network configuration list with libcni's semantics.

``ConfList`` is the parsed network (a ``.conflist``, or a single ``.conf`` turned into a list
of one, as libcni does). ``Network`` runs its plugins for one attachment (container ID,
netns, interface name):

- ADD runs the plugins in order, each given the previous plugin's result as ``prevResult``,
  the list's ``name`` and ``cniVersion``, and a ``runtimeConfig`` holding only the
  capabilities it declares. The final result is cached (``cnicache``). If any step fails,
  DEL runs for every plugin of the list in reverse (the spec's advice) and the error is
  raised: nothing stays half-created.
- CHECK (spec >= 0.4.0, unless ``disableCheck``) runs them in order with the cached result.
- DEL runs them in reverse with the cached result (spec >= 0.4.0), then drops the cache
  entry. A missing or corrupt cache entry does not stop it, and a second DEL succeeds.
- STATUS and the plugins' GC verb exist from spec 1.1.0 and are skipped below it, as libcni
  does; GC (unless ``disableGC``) first runs DEL for every cached attachment of this network
  that is not in the valid list, at any version, as libcni's GCNetworkList does.

Plugins are run through an ``Exec`` (injectable; the default looks the type up in the CNI
path and runs it, optionally inside a "node" network namespace, because plugins such as
bridge and portmap change the namespace they run in).

This module executes CNI chains only: it knows nothing of pods, SQLite or capture rules.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from weir import netns
from weir.netns import NetNS
from weir.runtime.cnicache import CacheEntry, CorruptCacheError, ResultCache

SPEC_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = SPEC_VERSIONS[-1]
DEFAULT_CACHE_DIR = "/var/lib/cni"
LOOPBACK_CONFLIST: Mapping[str, Any] = {  # what containerd's go-cni runs for "lo"
    "cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")  # libcni's network name and container ID rule
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def version_key(version: str) -> tuple[int, int, int]:
    """``"1.0.0"`` -> ``(1, 0, 0)``; ValueError for anything that is not X.Y.Z."""
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a CNI version (X.Y.Z)")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


# ---- errors ---------------------------------------------------------------------------------


class CniError(Exception):
    """Base of this module's errors."""


class CniConfigError(CniError):
    """A network configuration is unusable; names the source and the field."""

    def __init__(self, source: str, field_name: str, problem: str) -> None:
        super().__init__(f"{source}: {field_name}: {problem}")
        self.source = source
        self.field = field_name
        self.problem = problem


class CheckNotSupportedError(CniError):
    """CHECK asked of a network whose spec version predates it (< 0.4.0)."""


class PluginNotFoundError(CniError):
    """No executable for a plugin type in the CNI path."""


class CacheError(CniError):
    """A cached result exists but cannot be read."""


class PluginError(CniError):
    """A plugin exited non-zero (or printed no usable result). ``code`` is the spec's error
    code from the plugin's error JSON, None when the plugin gave none."""

    def __init__(self, plugin_type: str, command: str, code: int | None, msg: str, details: str = "",
                 *, stderr: str = "") -> None:
        text = f"plugin {plugin_type} failed ({command})"
        text += f": [{code}] {msg}" if code is not None else f": {msg}"
        if details:
            text += f": {details}"
        super().__init__(text)
        self.plugin_type = plugin_type
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        self.stderr = stderr

    @classmethod
    def from_output(cls, plugin_type: str, command: str, stdout: str, stderr: str, returncode: int) -> PluginError:
        """Parse the spec's error JSON from stdout; fall back to stderr when there is none."""
        text = stdout.strip()
        if not text:
            msg = f"{stderr.strip()!r}" if stderr.strip() else f"exit status {returncode}, no error message"
            return cls(plugin_type, command, None, msg, stderr=stderr)
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return cls(plugin_type, command, None, f"exit status {returncode}, error output is not JSON: {text!r}",
                       stderr.strip(), stderr=stderr)
        code = body.get("code")
        return cls(plugin_type, command, code if isinstance(code, int) and not isinstance(code, bool) else None,
                   str(body.get("msg", "")), str(body.get("details", "") or ""), stderr=stderr)


# ---- configuration --------------------------------------------------------------------------


def _bool(raw: Mapping[str, Any], key: str, source: str) -> bool:
    value = raw.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CniConfigError(source, key, f"must be true or false, not {value!r}")


def _plugin(raw: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise CniConfigError(source, where, f"must be an object, not {type(raw).__name__}")
    kind = raw.get("type")
    if not isinstance(kind, str) or not kind:
        raise CniConfigError(source, f"{where}.type", "missing" if kind is None else f"invalid: {kind!r}")
    if "/" in kind or kind in (".", ".."):
        raise CniConfigError(source, f"{where}.type", f"must be a plain file name, not {kind!r}")
    caps = raw.get("capabilities", {})
    if not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values()):
        raise CniConfigError(source, f"{where}.capabilities", "must map capability names to true or false")
    return raw


def _version(raw: Mapping[str, Any], source: str) -> tuple[str, tuple[str, ...]]:
    """The version libcni would pick: the highest of ``cniVersions`` and ``cniVersion`` that this
    implementation knows (higher ones are skipped), then refused unless it is a known version."""
    version = raw.get("cniVersion")
    if version is not None and not isinstance(version, str):
        raise CniConfigError(source, "cniVersion", f"must be a string, not {version!r}")
    listed = raw.get("cniVersions")
    versions: tuple[str, ...] = ()
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            raise CniConfigError(source, "cniVersions", "must be a list of version strings")
        versions = tuple(listed)
        candidates = [*versions, *([version] if version else [])]
        for i, candidate in enumerate(candidates):
            try:
                version_key(candidate)
            except ValueError as exc:
                where = f"cniVersions[{i}]" if i < len(versions) else "cniVersion"
                raise CniConfigError(source, where, str(exc)) from None
        usable = [v for v in candidates if version_key(v) <= version_key(CURRENT_VERSION)]
        if usable:
            version = max(usable, key=version_key)
    if not version:
        raise CniConfigError(source, "cniVersion", "missing")
    if version not in SPEC_VERSIONS:
        raise CniConfigError(source, "cniVersion", f"unsupported version {version!r} (supported: "
                                                   f"{', '.join(SPEC_VERSIONS)})")
    return version, versions


@dataclass(frozen=True)
class ConfList:
    """A parsed network configuration list. ``plugins`` are the raw plugin objects, passed to
    the plugins unchanged apart from the keys the runtime injects."""

    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    disable_check: bool = False
    disable_gc: bool = False
    cni_versions: tuple[str, ...] = ()
    source: str = "<dict>"
    raw: bytes = field(default=b"", repr=False)  # the list's JSON, stored in the result cache

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "<dict>", raw_bytes: bytes | None = None,
                  extra_plugins: Sequence[dict[str, Any]] = ()) -> ConfList:
        """A list (the object has ``plugins``) or a single plugin configuration (it has
        ``type`` and no ``plugins``), which becomes a list of one, as libcni's ConfListFromConf."""
        if not isinstance(raw, Mapping):
            raise CniConfigError(source, "<top>", f"must be a JSON object, not {type(raw).__name__}")
        if "plugins" not in raw and "type" in raw:
            raw = {"name": raw.get("name"), "cniVersion": raw.get("cniVersion"), "plugins": [dict(raw)]}
            raw_bytes = None
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise CniConfigError(source, "name", "missing" if name is None else f"invalid: {name!r}")
        if not _NAME.match(name):
            raise CniConfigError(source, "name", f"{name!r} must start with a letter or digit and hold only "
                                                 "letters, digits, '_', '.' and '-'")
        version, versions = _version(raw, source)
        listed = raw.get("plugins", [])
        if not isinstance(listed, list):
            raise CniConfigError(source, "plugins", f"must be a list, not {type(listed).__name__}")
        plugins = [_plugin(p, source, f"plugins[{i}]") for i, p in enumerate(listed)]
        plugins += [_plugin(p, source, f"drop-in[{i}]") for i, p in enumerate(extra_plugins)]
        if not plugins:
            raise CniConfigError(source, "plugins", "missing or empty")
        return cls(name=name, cni_version=version, plugins=tuple(plugins),
                   disable_check=_bool(raw, "disableCheck", source), disable_gc=_bool(raw, "disableGC", source),
                   cni_versions=versions, source=source,
                   raw=raw_bytes if raw_bytes is not None else json.dumps(raw, separators=(",", ":")).encode())

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "<bytes>") -> ConfList:
        return cls.from_dict(_json_object(data, source), source=source, raw_bytes=data)

    @classmethod
    def load(cls, path: str | Path) -> ConfList:
        """Load a ``.conflist`` (with the plugin drop-ins of libcni 1.3: ``<dir>/<name>/*.conf``,
        unless ``loadOnlyInlinedPlugins``) or a single-plugin ``.conf``/``.json``."""
        path = Path(path)
        source = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CniConfigError(source, "<file>", exc.strerror or str(exc)) from None
        raw = _json_object(data, source)
        if path.suffix != ".conflist":
            if "type" not in raw:
                raise CniConfigError(source, "type", "missing (a .conf holds a single plugin configuration)")
            return cls.from_dict(raw, source=source)
        if "type" in raw and "plugins" not in raw:
            raise CniConfigError(source, "plugins", "missing (a .conflist holds a list; this looks like a .conf)")
        inline_only = _bool(raw, "loadOnlyInlinedPlugins", source)
        if inline_only and "plugins" not in raw:
            raise CniConfigError(source, "plugins", "missing, and loadOnlyInlinedPlugins is true")
        drop_ins: list[dict[str, Any]] = []
        name = raw.get("name")
        if not inline_only and isinstance(name, str) and _NAME.match(name):
            folder = path.parent / name
            for conf in sorted(folder.glob("*.conf")) if folder.is_dir() else []:
                try:
                    drop_ins.append(_json_object(conf.read_bytes(), str(conf)))
                except OSError as exc:
                    raise CniConfigError(str(conf), "<file>", exc.strerror or str(exc)) from None
        return cls.from_dict(raw, source=source, raw_bytes=data, extra_plugins=drop_ins)

    def at_least(self, version: str) -> bool:
        return version_key(self.cni_version) >= version_key(version)


def _json_object(data: bytes, source: str) -> dict[str, Any]:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise CniConfigError(source, "<json>", f"invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CniConfigError(source, "<top>", f"must be a JSON object, not {type(raw).__name__}")
    return raw


# ---- one invocation -------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeConf:
    """The per-attachment arguments (libcni's RuntimeConf). The reference plugins refuse
    CNI_ARGS keys they do not know unless ``("IgnoreUnknown", "1")`` comes first, as
    containerd and kubelet send it; this module passes ``args`` as given."""

    container_id: str
    netns: str
    ifname: str
    args: Sequence[tuple[str, str]] = ()  # CNI_ARGS, in order
    capability_args: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"portMappings": [...]}


@dataclass(frozen=True)
class Attachment:
    """A (container ID, interface) pair a GC must keep."""

    container_id: str
    ifname: str


def netconf(plugin: Mapping[str, Any], name: str, cni_version: str, prev_result: Mapping[str, Any] | None = None,
            capability_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What one plugin reads on stdin: its own object with the list's ``name`` and
    ``cniVersion``, ``prevResult`` when there is one, and ``runtimeConfig`` holding the
    capability arguments the plugin declares (left out when none applies)."""
    conf = dict(plugin)
    conf["name"] = name
    conf["cniVersion"] = cni_version
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    declared = plugin.get("capabilities") or {}
    runtime = {cap: (capability_args or {})[cap] for cap, on in declared.items()
               if on and cap in (capability_args or {})}
    if runtime:
        conf["runtimeConfig"] = runtime
    return conf


def plugin_env(command: str, rt: RuntimeConf | None, path: Sequence[str]) -> dict[str, str]:
    """The CNI_* variables of one invocation (empty per-attachment values for STATUS and GC)."""
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": rt.container_id if rt else "",
        "CNI_NETNS": rt.netns if rt else "",
        "CNI_IFNAME": rt.ifname if rt else "",
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in rt.args) if rt else "",
        "CNI_PATH": os.pathsep.join(path),
    }


class Exec(Protocol):
    """Runs plugin ``plugin_type`` with the CNI_* ``env`` and ``stdin``; (stdout, stderr, code)."""

    def __call__(self, plugin_type: str, env: Mapping[str, str], stdin: str, /) -> tuple[str, str, int]: ...


@dataclass(frozen=True)
class PluginExec:
    """The default Exec: the first executable named ``type`` in ``path``, run with this
    process's environment plus the CNI_* variables, inside ``node`` when given."""

    path: Sequence[str]
    node: NetNS | None = None
    timeout: float = 60.0

    def find(self, plugin_type: str) -> str:
        for directory in self.path:
            candidate = os.path.join(directory, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise PluginNotFoundError(f"failed to find plugin {plugin_type!r} in path {list(self.path)}")

    def __call__(self, plugin_type: str, env: Mapping[str, str], stdin: str) -> tuple[str, str, int]:
        binary = self.find(plugin_type)
        full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        full.update(env)
        done = netns.run([binary], self.node, input=stdin, env=full, timeout=self.timeout)
        return done.stdout, done.stderr, done.returncode


# ---- the network ----------------------------------------------------------------------------


def _check_attachment(rt: RuntimeConf) -> None:
    if not _NAME.match(rt.container_id):
        raise CniError(f"invalid container ID {rt.container_id!r}")
    name = rt.ifname
    if not name or len(name) > 15 or name in (".", "..") or any(c in name for c in "/:") or any(
            c.isspace() for c in name):
        raise CniError(f"invalid interface name {name!r}")


class Network:
    """One conflist bound to a plugin path, a result cache and an Exec."""

    def __init__(self, conflist: ConfList, path: Sequence[str], cache_dir: str | Path = DEFAULT_CACHE_DIR,
                 exec: Exec | None = None, node: NetNS | None = None) -> None:
        self.conflist = conflist
        self.path = tuple(path)
        self.cache = ResultCache(Path(cache_dir))
        self.exec: Exec = exec if exec is not None else PluginExec(self.path, node)

    @property
    def name(self) -> str:
        return self.conflist.name

    # -- verbs --

    def add(self, rt: RuntimeConf) -> dict[str, Any]:
        """Run ADD through the chain and cache the result; on any failure, DEL the whole chain
        (reverse order, best effort) and raise the failure."""
        _check_attachment(rt)
        result: dict[str, Any] | None = None
        try:
            for plugin in self.conflist.plugins:
                result = self._invoke(plugin, "ADD", rt, result)
            assert result is not None  # a list has plugins, and ADD raises unless it got a result
            self.cache.write(CacheEntry(rt.container_id, self.name, rt.ifname, self.conflist.raw, rt.netns,
                                        tuple(rt.args), dict(rt.capability_args), result))
        except Exception as exc:
            self._roll_back(rt, exc)
            raise
        return result

    def check(self, rt: RuntimeConf) -> None:
        """Run CHECK through the chain with the cached result; raises PluginError on drift."""
        if not self.conflist.at_least("0.4.0"):
            raise CheckNotSupportedError(f"network {self.name}: configuration version "
                                         f"{self.conflist.cni_version!r} does not support the CHECK command")
        if self.conflist.disable_check:
            return
        _check_attachment(rt)
        prev = self.cached_result(rt)
        for plugin in self.conflist.plugins:
            self._invoke(plugin, "CHECK", rt, prev)

    def delete(self, rt: RuntimeConf) -> None:
        """Run DEL through the chain in reverse, then drop the cache entry. Idempotent; a
        missing or corrupt cache entry only means no ``prevResult``. A failing plugin stops
        the chain and keeps the cache entry, so that the DEL can be retried."""
        _check_attachment(rt)
        prev: dict[str, Any] | None = None
        if self.conflist.at_least("0.4.0"):  # prevResult on DEL arrived with 0.4.0
            try:
                prev = self.cached_result(rt)
            except CacheError:
                self.cache.remove(self.name, rt.container_id, rt.ifname)
        for plugin in reversed(self.conflist.plugins):
            self._invoke(plugin, "DEL", rt, prev)
        self.cache.remove(self.name, rt.container_id, rt.ifname)

    def status(self) -> None:
        """STATUS for each plugin (spec >= 1.1.0; a no-op below); raises the first failure."""
        if not self.conflist.at_least("1.1.0"):
            return
        for plugin in self.conflist.plugins:
            self._invoke(plugin, "STATUS", None, None)

    def gc(self, valid_attachments: Iterable[Attachment]) -> None:
        """DEL every cached attachment of this network not in ``valid_attachments``, then (spec
        >= 1.1.0) GC each plugin with ``cni.dev/valid-attachments``. Continues past failures
        and raises them together at the end (an ExceptionGroup). Nothing when ``disableGC``."""
        if self.conflist.disable_gc:
            return
        valid = list(dict.fromkeys(valid_attachments))
        keep = set(valid)
        errors: list[Exception] = []
        for entry in self.cache.entries(self.name):
            if Attachment(entry.container_id, entry.ifname) in keep:
                continue
            rt = RuntimeConf(entry.container_id, entry.netns, entry.ifname, entry.cni_args,
                             dict(entry.capability_args))
            try:
                self.delete(rt)
            except Exception as exc:
                exc.add_note(f"while deleting stale attachment {entry.container_id} {entry.ifname}")
                errors.append(exc)
        if self.conflist.at_least("1.1.0"):
            listed = [{"containerID": a.container_id, "ifname": a.ifname} for a in valid]
            for plugin in self.conflist.plugins:
                try:
                    self._invoke({**plugin, "cni.dev/valid-attachments": listed}, "GC", None, None)
                except Exception as exc:
                    errors.append(exc)
        if errors:
            raise ExceptionGroup(f"GC of network {self.name}", errors)

    def cached_result(self, rt: RuntimeConf) -> dict[str, Any] | None:
        """The result cached by the last successful ADD, None when there is none."""
        try:
            entry = self.cache.read(self.name, rt.container_id, rt.ifname)
        except CorruptCacheError as exc:
            raise CacheError(f"network {self.name}: {exc}") from None
        return dict(entry.result) if entry is not None and entry.result is not None else None

    def cached_attachments(self) -> list[RuntimeConf]:
        """The attachments this network has cached results for (what a GC looks at)."""
        return [RuntimeConf(e.container_id, e.netns, e.ifname, e.cni_args, dict(e.capability_args))
                for e in self.cache.entries(self.name)]

    # -- loopback: what the runtime runs for "lo" before the conflist, as containerd does --

    def loopback(self) -> Network:
        """containerd's ``cni-loopback`` network, with this network's path, cache and Exec."""
        return Network(ConfList.from_dict(LOOPBACK_CONFLIST, source="<loopback>"), self.path, self.cache.root,
                       exec=self.exec)

    def loopback_up(self, container_id: str, netns_path: str) -> dict[str, Any]:
        return self.loopback().add(RuntimeConf(container_id, netns_path, "lo"))

    def loopback_down(self, container_id: str, netns_path: str) -> None:
        self.loopback().delete(RuntimeConf(container_id, netns_path, "lo"))

    # -- plumbing --

    def _invoke(self, plugin: Mapping[str, Any], command: str, rt: RuntimeConf | None,
                prev: Mapping[str, Any] | None) -> dict[str, Any] | None:
        kind = str(plugin["type"])
        conf = netconf(plugin, self.name, self.conflist.cni_version, prev,
                       rt.capability_args if rt is not None else None)
        stdout, stderr, code = self.exec(kind, plugin_env(command, rt, self.path), json.dumps(conf))
        if code != 0:
            raise PluginError.from_output(kind, command, stdout, stderr, code)
        if command != "ADD":
            return None
        try:
            result = json.loads(stdout)
        except ValueError:
            result = None
        if not isinstance(result, dict):
            raise PluginError(kind, command, None, f"printed no result object: {stdout.strip()[:200]!r}",
                              stderr=stderr)
        return result

    def _roll_back(self, rt: RuntimeConf, failure: Exception) -> None:
        for plugin in reversed(self.conflist.plugins):
            try:
                self._invoke(plugin, "DEL", rt, None)
            except Exception as exc:
                failure.add_note(f"rollback: DEL of plugin {plugin['type']} failed too: {exc}")
        try:
            self.cache.remove(self.name, rt.container_id, rt.ifname)
        except OSError as exc:
            failure.add_note(f"rollback: removing the cached result failed: {exc}")
