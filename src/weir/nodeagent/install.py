"""What the node agent's installer wants on disk, decided without touching it (pure).

- :class:`InstallConfig`: the installer's settings under Istio's names (``from_source``).
- :class:`PluginEntry`: the plugin's conflist entry, shaped as Istio's ``plugin.Config``.
- :func:`plan_config`: which file gets the entry, with what bytes, what else to remove, per
  :class:`~weir.nodeagent.installconf.Mode` (chained, standalone, owned copy, CNI 1.1 drop-in).
- :func:`plan_cleanup`: how to take it all back, byte-identical where weir kept the original.
- :func:`render_kubeconfig`: the plugin's kubeconfig text.
- :class:`Throttle`: how fast to re-install, and when to say that someone keeps reverting us.

Names are parameters (:class:`Flavor`): weir writes ``type: weir-cni``, ``YYY-weir-cni.conf``,
``weir-cni-kubeconfig``; the golden tests pass Istio's names and get Istio's bytes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from weir.nodeagent.installconf import (
    ConfDir,
    ConfError,
    Mode,
    as_list,
    dropin_network,
    dropin_target,
    find_entry,
    go_ext,
    go_loads,
    go_marshal,
    insert_entry,
    is_single_of,
    ours,
    parse_object,
    remove_entry,
    resolve_primary,
    same_content,
    same_json,
    valid_configs,
)
from weir.nodeagent.settings import ConfigError, Source

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_RUN_DIR = "/var/run/weir-cni"
DEFAULT_SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_OWNED_FILENAME = "02-weir-cni.conflist"
LOG_LEVELS = ("debug", "info", "warn", "warning", "error")  # what weir-cni accepts
ENTRY_VERSION = "0.3.1"  # Istio's plugin.Config cniVersion, for a standalone file and a converted .conf


@dataclass(frozen=True)
class Flavor:
    """The names the installer writes. weir's by default; the golden tests use Istio's."""

    plugin_type: str = "weir-cni"  # the entry's name and type, and the plugin binary's file name
    standalone_name: str = "YYY-weir-cni.conf"
    kubeconfig_name: str = "weir-cni-kubeconfig"
    kubeconfig_user: str = "weir-cni"
    kubeconfig_context: str = "weir-cni-context"
    # weir puts back a .conf it converted to .conflist; Istio leaves the .conflist (its gotcha 7)
    restore_converted_conf: bool = True


WEIR = Flavor()


@dataclass(frozen=True)
class PluginEntry:
    """Istio's ``plugin.Config`` as the installer fills it, in its field order. weir-cni reads
    ``cni_agent_run_dir``, ``plugin_log_level``, ``exclude_namespaces``, ``pod_namespace``; the
    other keys are written for Istio's shape (weir has no ambient mode: they stay off)."""

    plugin_log_level: str = "info"
    cni_agent_run_dir: str = DEFAULT_RUN_DIR
    exclude_namespaces: tuple[str, ...] = ()
    pod_namespace: str = ""
    native_nftables: bool = False
    ambient_enabled: bool = False
    enablement_selectors: tuple[Mapping[str, Any], ...] = ()
    enable_ambient_detection_retry: bool = False
    fail_open_namespaces: tuple[str, ...] = ()  # weir's own key, written only when set

    def to_object(self, plugin_type: str) -> dict[str, Any]:
        extra = {"fail_open_namespaces": list(self.fail_open_namespaces)} if self.fail_open_namespaces else {}
        return {
            "cniVersion": ENTRY_VERSION, "name": plugin_type, "type": plugin_type,
            "ipam": {}, "dns": {},  # Go does not omit empty structs
            "plugin_log_level": self.plugin_log_level, "cni_agent_run_dir": self.cni_agent_run_dir,
            "ambient_enabled": self.ambient_enabled,
            "enablement_selectors": [dict(s) for s in self.enablement_selectors],
            "exclude_namespaces": list(self.exclude_namespaces) or None,
            "pod_namespace": self.pod_namespace, "native_nftables": self.native_nftables,
            "enable_ambient_detection_retry": self.enable_ambient_detection_retry,
            **extra,
        }


def standalone_config(entry: PluginEntry, plugin_type: str) -> bytes:
    """Istio's standalone file: the struct marshalled in field order."""
    return go_marshal(entry.to_object(plugin_type), sort_keys=False)


def dropin_config(entry: PluginEntry, plugin_type: str) -> bytes:
    """The drop-in plugin object; the list's ``name``/``cniVersion`` replace its own at run time."""
    return go_marshal({k: v for k, v in entry.to_object(plugin_type).items() if k != "cniVersion"}, sort_keys=False)


@dataclass(frozen=True)
class InstallConfig:
    """The installer's settings. Env names are Istio's; flags in ``from_source``."""

    conf_dir: str = DEFAULT_CONF_DIR
    conf_name: str = ""  # pin the primary file ("" = the first valid one)
    chained: bool = True
    bin_dirs: tuple[str, ...] = (DEFAULT_BIN_DIR,)
    run_dir: str = DEFAULT_RUN_DIR  # as the plugin sees it (written into the entry)
    owned: bool = False
    owned_filename: str = DEFAULT_OWNED_FILENAME
    dropin: bool = False
    group_read: bool = False
    kubeconfig_mode: int = 0o600
    k8s_service_host: str = ""
    k8s_service_port: str = ""
    k8s_service_protocol: str = "https"
    kube_ca_file: str = ""
    skip_tls_verify: bool = False
    service_account_dir: str = DEFAULT_SERVICE_ACCOUNT_DIR
    exclude_namespaces: tuple[str, ...] = ()
    fail_open_namespaces: tuple[str, ...] = ()
    pod_namespace: str = ""
    plugin_log_level: str = "info"
    native_nftables: bool = False

    @property
    def mode(self) -> Mode:
        if not self.chained:
            return Mode.STANDALONE
        if self.dropin:
            return Mode.DROPIN
        return Mode.OWNED if self.owned else Mode.CHAINED

    @property
    def conf_file_mode(self) -> int:
        """Mode of the files weir owns in the conf dir (Istio: 0600, 0640 with group read)."""
        return 0o640 if self.group_read else 0o600

    @property
    def writes_kubeconfig(self) -> bool:
        """Only with an API server: the embedded node has none (KUBERNETES_SERVICE_HOST unset)."""
        return bool(self.k8s_service_host)

    def entry(self) -> PluginEntry:
        return PluginEntry(plugin_log_level=self.plugin_log_level, cni_agent_run_dir=self.run_dir,
                           exclude_namespaces=self.exclude_namespaces, pod_namespace=self.pod_namespace,
                           native_nftables=self.native_nftables, fail_open_namespaces=self.fail_open_namespaces)

    @classmethod
    def from_source(cls, src: Source) -> InstallConfig:
        """Read every setting (flag, else Istio's env name, else default); a bad value is a
        :class:`ConfigError` naming the flag or variable."""
        chained = src.boolean("chained-cni-plugin", "CHAINED_CNI_PLUGIN", True)
        conf_name = _file_name(src, "cni-conf-name", "CNI_CONF_NAME", "")
        if conf_name and not chained and go_ext(conf_name) != ".conf":
            raise ConfigError(f"CNI_CONF_NAME: invalid value {conf_name!r}: a standalone plugin file must end in .conf")
        owned_filename = _file_name(src, "istio-owned-cni-conf-filename", "ISTIO_OWNED_CNI_CONF_FILENAME",
                                    "") or DEFAULT_OWNED_FILENAME
        if go_ext(owned_filename) != ".conflist":
            raise ConfigError(f"ISTIO_OWNED_CNI_CONF_FILENAME: invalid value {owned_filename!r}: must end in .conflist")
        owned = src.boolean("istio-owned-cni-config", "ISTIO_OWNED_CNI_CONFIG", False)
        dropin = src.boolean("cni-conf-dropin", "CNI_CONF_DROPIN", False)
        if dropin and not chained:
            raise ConfigError("CNI_CONF_DROPIN: a drop-in needs a chained plugin (CHAINED_CNI_PLUGIN is false)")
        if dropin and owned:
            raise ConfigError("CNI_CONF_DROPIN: cannot be combined with ISTIO_OWNED_CNI_CONFIG; choose one")
        name, dirs = src.get("cni-bin-dir", "CNI_BIN_DIR", DEFAULT_BIN_DIR)
        bin_dirs = tuple(dict.fromkeys(d.strip().rstrip("/") or "/" for d in dirs.split(",") if d.strip()))
        if not bin_dirs or not all(d.startswith("/") for d in bin_dirs):
            raise ConfigError(f"{name}: invalid value {dirs!r}: expected absolute directories, comma-separated")
        name, level = src.get("log-level", "CNI_PLUGIN_LOG_LEVEL", "info")
        if level.strip().lower() not in LOG_LEVELS:
            raise ConfigError(f"{name}: invalid value {level!r}: expected one of {', '.join(LOG_LEVELS)}")
        host = src.text("kubernetes-service-host", "KUBERNETES_SERVICE_HOST").strip()
        port = src.text("kubernetes-service-port", "KUBERNETES_SERVICE_PORT").strip()
        if host and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigError(f"KUBERNETES_SERVICE_PORT: invalid value {port!r}: expected a port (1-65535) "
                              "when KUBERNETES_SERVICE_HOST is set")
        name, protocol = src.get("kubernetes-service-protocol", "KUBERNETES_SERVICE_PROTOCOL", "https")
        if protocol.strip().lower() not in ("https", "http"):
            raise ConfigError(f"{name}: invalid value {protocol!r}: expected https or http")
        ca_file = src.text("kube-ca-file", "KUBE_CA_FILE").strip()
        if ca_file and not ca_file.startswith("/"):
            raise ConfigError(f"KUBE_CA_FILE: invalid value {ca_file!r}: must be an absolute path")
        return cls(
            conf_dir=src.path("cni-conf-dir", "MOUNTED_CNI_NET_DIR", DEFAULT_CONF_DIR),
            conf_name=conf_name, chained=chained, bin_dirs=bin_dirs,
            run_dir=src.path("run-dir", "CNI_AGENT_RUN_DIR", DEFAULT_RUN_DIR),
            owned=owned, owned_filename=owned_filename, dropin=dropin,
            group_read=src.boolean("cni-conf-group-read", "CNI_CONF_GROUP_READ", False),
            kubeconfig_mode=_octal_mode(src, "kubeconfig-mode", "KUBECONFIG_MODE", 0o600),
            k8s_service_host=host, k8s_service_port=port, k8s_service_protocol=protocol.strip().lower(),
            kube_ca_file=ca_file, skip_tls_verify=src.boolean("skip-tls-verify", "SKIP_TLS_VERIFY", False),
            service_account_dir=src.path("service-account-dir", "WEIR_SERVICE_ACCOUNT_DIR",
                                         DEFAULT_SERVICE_ACCOUNT_DIR),
            exclude_namespaces=tuple(dict.fromkeys(src.names("exclude-namespaces", "EXCLUDE_NAMESPACES"))),
            fail_open_namespaces=tuple(dict.fromkeys(src.names("fail-open-namespaces", "WEIR_FAIL_OPEN_NAMESPACES"))),
            pod_namespace=src.text("pod-namespace", "POD_NAMESPACE").strip(),
            plugin_log_level=level.strip().lower(),
            native_nftables=src.boolean("native-nftables", "NATIVE_NFTABLES", False),
        )


def _file_name(src: Source, flag: str, var: str, default: str) -> str:
    name, value = src.get(flag, var, default)
    value = value.strip()
    if "/" in value or value in (".", "..") or "\0" in value:
        raise ConfigError(f"{name}: invalid value {value!r}: must be a file name in the CNI conf dir")
    return value


def _octal_mode(src: Source, flag: str, var: str, default: int) -> int:
    """A file mode, always octal: ``0600``, ``600`` and ``0o600`` are the same."""
    name, value = src.get(flag, var, f"{default:o}")
    text = value.strip().lower().removeprefix("0o")
    if not re.fullmatch(r"[0-7]{1,4}", text) or int(text, 8) > 0o777:
        raise ConfigError(f"{name}: invalid value {value!r}: expected an octal file mode such as 0600")
    return int(text, 8)


# ---- the config plan -------------------------------------------------------------------------------


class PlanError(ValueError):
    """The configuration cannot be installed as asked; the message says why and what to change."""


@dataclass(frozen=True)
class FileWrite:
    """Write ``data`` to ``path`` (relative to the conf dir). ``mode_from``: keep that existing
    file's mode and owner (the primary, not ours); ``None``: a file of ours, ``conf_file_mode``."""

    path: str
    data: bytes
    mode_from: str | None = None


@dataclass(frozen=True)
class ConfigPlan:
    mode: Mode
    target: str                      # the file that holds (or is) weir's entry
    primary: str | None              # the primary config, in the chained modes
    writes: tuple[FileWrite, ...]
    removes: tuple[str, ...] = ()    # the .conf a converted .conflist replaces
    leftovers: tuple[str, ...] = ()  # weir files of another mode (removed even when the target is fine)
    remember: str | None = None      # keep the primary's pre-weir bytes before writing (cleanup restores them)
    exclude: frozenset[str] = frozenset()  # weir's own files, never a primary


def own_files(conf: ConfDir, config: InstallConfig, flavor: Flavor = WEIR) -> frozenset[str]:
    return ours(conf, flavor.plugin_type, also=(config.owned_filename,))


def plan_config(conf: ConfDir, config: InstallConfig, flavor: Flavor = WEIR,
                entry: PluginEntry | None = None) -> ConfigPlan | None:
    """What to write for ``config`` given the conf dir ``conf``; ``None``: no primary config yet
    (wait for one). ``entry`` defaults to ``config.entry()``. :class:`PlanError` or
    :class:`ConfError` when it cannot be done."""
    kind = flavor.plugin_type
    entry = entry or config.entry()
    mode = config.mode
    exclude = own_files(conf, config, flavor)
    if mode is Mode.STANDALONE:
        name = config.conf_name or flavor.standalone_name
        return ConfigPlan(mode, name, None, (FileWrite(name, standalone_config(entry, kind)),),
                          leftovers=_leftovers(conf, config, flavor, name, None), exclude=exclude)
    primary = resolve_primary(conf, config.conf_name, exclude=exclude)
    if primary is None:
        return None
    data = conf.files.get(primary)
    if data is None:
        raise PlanError(f"cannot read the primary CNI config {primary}")
    if mode is Mode.CHAINED:
        target = primary[: -len(".conf")] + ".conflist" if primary.endswith(".conf") else primary
        new = insert_entry(data, entry.to_object(kind), kind, primary)
        return ConfigPlan(mode, target, primary, (FileWrite(target, new, mode_from=primary),),
                          removes=(primary,) if target != primary else (),
                          leftovers=_leftovers(conf, config, flavor, target, primary), remember=primary,
                          exclude=exclude)
    if mode is Mode.OWNED:
        owned = config.owned_filename
        others = [n for n in valid_configs(conf) if n not in exclude]
        if others and owned.encode() >= others[0].encode():
            raise PlanError(f"ISTIO_OWNED_CNI_CONF_FILENAME {owned} does not sort before {others[0]}: the "
                            "runtime would not use it; choose a name that sorts first (e.g. 00-...)")
        new = insert_entry(data, entry.to_object(kind), kind, primary)
        return ConfigPlan(mode, owned, primary, (FileWrite(owned, new),),
                          leftovers=_leftovers(conf, config, flavor, owned, primary), exclude=exclude)
    if go_ext(primary) != ".conflist":
        raise PlanError(f"CNI_CONF_DROPIN: the primary {primary} is not a .conflist, and libcni loads drop-ins "
                        "only for lists; turn CNI_CONF_DROPIN off to insert into it instead")
    try:
        network = dropin_network(data, primary)
    except ConfError as exc:
        raise PlanError(f"CNI_CONF_DROPIN: {exc}; turn CNI_CONF_DROPIN off to insert into it instead") from None
    target = dropin_target(network, kind)
    return ConfigPlan(mode, target, primary, (FileWrite(target, dropin_config(entry, kind)),),
                      leftovers=_leftovers(conf, config, flavor, target, primary), exclude=exclude)


def _leftovers(conf: ConfDir, config: InstallConfig, flavor: Flavor, target: str,
               primary: str | None) -> tuple[str, ...]:
    """weir's files from another mode (they would run weir-cni twice or hide the primary)."""
    kind = flavor.plugin_type
    found = [n for n in sorted(conf.files) if n != target and is_single_of(conf.files[n], kind)]
    owned = config.owned_filename
    if owned != target and find_entry(conf.files.get(owned), kind) is not None:
        found.append(owned)
    if primary is not None:
        try:
            network = dropin_network(conf.files.get(primary) or b"", primary)
        except ConfError:
            network = None
        if network is not None:
            path = dropin_target(network, kind)
            if path != target and is_single_of((conf.dropins.get(network) or {}).get(f"{kind}.conf"), kind):
                found.append(path)
    return tuple(found)


# ---- cleanup ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanupPlan:
    writes: tuple[FileWrite, ...]
    removes: tuple[str, ...]


def plan_cleanup(conf: ConfDir, config: InstallConfig, flavor: Flavor = WEIR,
                 originals: Mapping[str, bytes] | None = None, dropins: Collection[str] = ()) -> CleanupPlan:
    """Take weir out of the conf dir, whatever the mode was: delete weir's own files (standalone,
    owned copy, drop-ins) and remove the entry from every conflist weir inserted into (those in
    ``originals`` and the current primary). A file whose content, less weir's entry, is still
    the saved original gets the original's exact bytes back; otherwise (someone else changed it
    since) the entry is removed and the rest re-marshalled, as Istio does. A ``.conf`` weir
    converted comes back as the ``.conf`` with ``restore_converted_conf``."""
    kind = flavor.plugin_type
    originals = originals or {}
    removes = [n for n in sorted(conf.files) if _standalone_candidate(n, config) and is_single_of(conf.files[n], kind)]
    if find_entry(conf.files.get(config.owned_filename), kind) is not None:
        removes.append(config.owned_filename)
    exclude = own_files(conf, config, flavor)
    candidates = dict.fromkeys(n[: -len(".conf")] + ".conflist" if n.endswith(".conf") else n for n in originals)
    primary = resolve_primary(conf, config.conf_name, exclude=exclude)
    if primary is not None:
        candidates[primary] = None
        try:
            network: str | None = dropin_network(conf.files.get(primary) or b"", primary)
        except ConfError:
            network = None
        if network is not None and is_single_of((conf.dropins.get(network) or {}).get(f"{kind}.conf"), kind):
            removes.append(dropin_target(network, kind))
    removes.extend(d for d in dropins if d not in removes)
    writes: list[FileWrite] = []
    for name in candidates:
        data = conf.files.get(name)
        if name in exclude or data is None or find_entry(data, kind) is None:
            continue
        stripped = remove_entry(data, kind, name)
        assert stripped is not None
        same, converted = originals.get(name), originals.get(name[: -len("list")])
        if same is not None and same_content(stripped, same):
            writes.append(FileWrite(name, same, mode_from=name))
        elif (flavor.restore_converted_conf and name.endswith(".conflist") and converted is not None
              and name[: -len("list")] not in conf.files and _converts_to(converted, stripped)):
            writes.append(FileWrite(name[: -len("list")], converted, mode_from=name))
            removes.append(name)
        else:
            writes.append(FileWrite(name, stripped, mode_from=name))
    return CleanupPlan(tuple(writes), tuple(removes))


def _standalone_candidate(name: str, config: InstallConfig) -> bool:
    return go_ext(name) in (".conf", ".conflist") or name == config.conf_name


def _converts_to(original: bytes, stripped: bytes) -> bool:
    try:
        return same_json(as_list(parse_object(original)), go_loads(stripped))
    except ConfError:
        return False


# ---- the plugin's kubeconfig -----------------------------------------------------------------------


class KubeconfigError(ValueError):
    """The kubeconfig cannot be written (no API server address, no CA)."""


_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./:@+=~\[\]-]*")


def _yaml_scalar(text: str) -> str:
    """A plain scalar when YAML reads it back as this very string, else a double-quoted one."""
    if _PLAIN.fullmatch(text) and yaml.safe_load(text) == text:
        return text
    return json.dumps(text)


def server_url(protocol: str, host: str, port: str) -> str:
    try:
        bracket = isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        bracket = False
    return f"{protocol}://[{host}]:{port}" if bracket else f"{protocol}://{host}:{port}"


def render_kubeconfig(*, host: str, port: str, token: str, protocol: str = "https", ca_data: bytes | None = None,
                      skip_tls_verify: bool = False, user: str = WEIR.kubeconfig_user,
                      context: str = WEIR.kubeconfig_context) -> str:
    """Istio's ``createKubeConfig(...).Full``: cluster ``local`` at the API server, ``ca_data``
    (or ``insecure-skip-tls-verify``), the service-account token as the user's credential."""
    if not host:
        raise KubeconfigError("KUBERNETES_SERVICE_HOST not set: is this not running within a pod?")
    if not port:
        raise KubeconfigError("KUBERNETES_SERVICE_PORT not set: is this not running within a pod?")
    if skip_tls_verify:
        tls = "    insecure-skip-tls-verify: true\n"
    elif ca_data is not None:
        tls = f"    certificate-authority-data: {base64.b64encode(ca_data).decode()}\n"
    else:
        raise KubeconfigError("no CA certificate for the API server (KUBE_CA_FILE or <service account>/ca.crt)")
    return (f"apiVersion: v1\nclusters:\n- cluster:\n{tls}"
            f"    server: {_yaml_scalar(server_url(protocol, host, port))}\n  name: local\n"
            f"contexts:\n- context:\n    cluster: local\n    user: {_yaml_scalar(user)}\n"
            f"  name: {_yaml_scalar(context)}\ncurrent-context: {_yaml_scalar(context)}\nkind: Config\n"
            f"users:\n- name: {_yaml_scalar(user)}\n  user:\n    token: {_yaml_scalar(token)}\n")


# ---- the re-install throttle -----------------------------------------------------------------------


class Throttle:
    """Istio's ``installationThrottle``: re-installs are meant to come at most once per
    ``interval`` (5 s). One sooner waits until then, but never more than ``max_delay`` (Istio
    1 s; weir 0.5 s, so that a reverted entry is back within 1 s even while fighting) and counts
    a hit; one after a quiet ``interval`` resets the count. More than ``warn_after`` (5) hits in
    a row means another component keeps reverting the config. Pure: the caller passes the time."""

    def __init__(self, interval: float = 5.0, max_delay: float = 0.5, warn_after: int = 5) -> None:
        self.interval = interval
        self.max_delay = max_delay
        self.warn_after = warn_after
        self.hits = 0
        self._last: float | None = None

    def reserve(self, now: float) -> float:
        """Seconds to wait before the re-install that happens at ``now``."""
        if self._last is None or now - self._last >= self.interval:
            self.hits, delay = 0, 0.0
        else:
            self.hits += 1
            delay = min(self.max_delay, self.interval - (now - self._last))
        self._last = now + delay
        return delay

    @property
    def fighting(self) -> bool:
        return self.hits > self.warn_after

    def should_warn(self) -> bool:
        """Warn on the first hit past ``warn_after``, then every 10th, not on every loop."""
        return self.fighting and (self.hits - self.warn_after - 1) % 10 == 0
