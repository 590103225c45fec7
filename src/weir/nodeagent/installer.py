"""The installer's driver (Istio's ``install-cni`` loop): puts the weir-cni plugin, its conflist
entry and its kubeconfig on the node, keeps them there, and takes them away on shutdown. The
decisions are pure (``install.py``, ``installconf.py``); this module reads and writes files.

Files are never written in place: a temporary file in the same directory, ``fsync``, ``rename``
over the target, ``fsync`` of the directory. A crash at any instant leaves each file either
complete-old or complete-new (stale temporaries, named ``.<file>.<type>-XXXX.tmp``, are removed
by the next pass). The primary conflist keeps its mode and owner; a ``.conf`` primary becomes
``.conflist`` by writing the list first and deleting the ``.conf`` after, so a runtime always
finds a valid config.

Byte-identical cleanup. Istio rewrites the primary with sorted keys, so removing the entry again
does not give back the original bytes. Before weir first writes into a primary that has no weir
entry, it saves the primary's bytes in ``<run dir>/installer/originals/`` (hostPath: it survives
agent restarts). ``cleanup()`` restores those exact bytes when the file, less weir's entry, is
still the same JSON; when another component changed it meanwhile, it removes the entry and keeps
their change (Istio's behaviour).

Threading: ``run(stop)`` blocks (run it on a thread); it waits on inotify (``inotify_simple``)
for the conf dir, each installed binary and the service-account dir, and checks ``stop`` at
least every 0.2 s. ``ready``, ``check()`` and ``cleanup()`` may be called from other threads;
``cleanup()`` waits for an install pass in progress. Call ``cleanup()`` after ``run`` returned.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from inotify_simple import INotify, flags  # type: ignore[import-untyped]

from weir.cni import bundle
from weir.nodeagent.install import (
    WEIR,
    ConfigPlan,
    FileWrite,
    Flavor,
    InstallConfig,
    KubeconfigError,
    PlanError,
    Throttle,
    plan_cleanup,
    plan_config,
    render_kubeconfig,
)
from weir.nodeagent.installconf import (
    ConfDir,
    ConfError,
    Verdict,
    check_config,
    dropin_networks,
    find_entry,
    go_ext,
    is_conf_name,
)

log = logging.getLogger("weir.nodeagent.install")

MAX_CONF_SIZE = 4 << 20
POLL_SECONDS = 0.2     # the longest a wait goes without looking at the stop event
RETRY_SECONDS = 5.0    # after a failed pass, retry at the latest this long after (sooner on a change)
_DIR_EVENTS = (flags.CREATE | flags.MODIFY | flags.CLOSE_WRITE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
               | flags.DELETE_SELF | flags.MOVE_SELF)
_ALWAYS = flags.DELETE_SELF | flags.MOVE_SELF | flags.IGNORED | flags.Q_OVERFLOW

# Istio's istio_cni_installs_total{result} values
SUCCESS = "SUCCESS"
COPY_BINARIES_FAILURE = "COPY_BINARIES_FAILURE"
CREATE_KUBECONFIG_FAILURE = "CREATE_KUBECONFIG_FAILURE"
CREATE_CNI_CONFIG_FAILURE = "CREATE_CNI_CONFIG_FAILURE"


class InstallError(Exception):
    """An install pass failed; ``result`` is Istio's metric label for the step."""

    def __init__(self, message: str, result: str = CREATE_CNI_CONFIG_FAILURE) -> None:
        super().__init__(message)
        self.result = result


class NoPrimaryConfig(InstallError):
    """Chained, and no primary CNI config appeared in time (Istio waits for one forever)."""


class Stopped(InstallError):
    """The stop event was set while waiting."""


class InstallObserver(Protocol):
    """What the agent may plug in (``monitoring.Metrics`` has this shape)."""

    def install_result(self, result: str) -> None: ...

    def set_ready(self, ready: bool) -> None: ...


# ---- files -----------------------------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int, *, tag: str, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` (temp file + fsync + rename + fsync of the directory)."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{tag}-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def remove_stale_temps(directory: str, tag: str, names: Iterable[str] = ()) -> list[str]:
    """Delete temporaries a killed writer left: ours (``.X.<tag>-R.tmp``) and those of
    ``bundle.build`` for ``names`` (``.X.tmp.R``). Returns what was removed."""
    ours = re.compile(rf"\..+\.{re.escape(tag)}-[a-z0-9_]+\.tmp")
    built = [re.compile(rf"\.{re.escape(n)}\.tmp\.[a-z0-9_]+") for n in names]
    removed = []
    try:
        entries = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in entries:
        if ours.fullmatch(name) or any(p.fullmatch(name) for p in built):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def _read_limited(path: str) -> bytes | None:
    """The file's bytes; ``None`` when it cannot be read as a regular file of sane size."""
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            data = f.read(MAX_CONF_SIZE + 1)
    except FileNotFoundError:
        raise
    except OSError:
        return None
    return data if len(data) <= MAX_CONF_SIZE else None


def read_conf_dir(path: str, extra: Iterable[str] = ()) -> ConfDir:
    """Snapshot the conf dir as libcni lists it: top-level ``.conf``/``.conflist`` files (and the
    names in ``extra``), plus the ``*.conf`` drop-ins of each list's network directory."""
    wanted = {n for n in extra if n and "/" not in n}
    files: dict[str, bytes | None] = {}
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return ConfDir()
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) or not (is_conf_name(entry.name) or entry.name in wanted):
            continue
        with contextlib.suppress(FileNotFoundError):
            files[entry.name] = _read_limited(entry.path)
    dropins: dict[str, dict[str, bytes | None] | None] = {}
    for network in dropin_networks(files):
        folder = os.path.normpath(f"{path}/{network}")  # Go's filepath.Join
        try:
            listing = [e for e in os.scandir(folder)
                       if not e.is_dir(follow_symlinks=False) and go_ext(e.name) == ".conf"]
        except FileNotFoundError:
            dropins[network] = {}
            continue
        except OSError:
            dropins[network] = None
            continue
        found: dict[str, bytes | None] = {}
        for e in listing:
            with contextlib.suppress(FileNotFoundError):
                found[e.name] = _read_limited(e.path)
        dropins[network] = found
    return ConfDir(files, dropins)


def _same_file(path: str, data: bytes, mode: int) -> bool:
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode or st.st_size != len(data):
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except FileNotFoundError:
        return False


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


# ---- watching --------------------------------------------------------------------------------------


class _Watcher:
    """One inotify instance over the directories that matter; ``wait`` returns True on a
    relevant event. A new one per pass (Istio too): watches are made after our own writes."""

    def __init__(self, targets: Sequence[tuple[str, frozenset[str] | None, int]]) -> None:
        self._inotify = INotify()
        self._names: dict[int, frozenset[str] | None] = {}
        for path, names, mask in targets:
            try:
                self._names[int(self._inotify.add_watch(path, mask))] = names
            except FileNotFoundError:
                log.debug("not watching %s: it does not exist", path)

    def wait(self, stop: threading.Event, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop.is_set():
            left = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
            if left <= 0:
                return False
            for event in self._inotify.read(timeout=int(left * 1000)):
                names = self._names.get(event.wd)
                if event.mask & _ALWAYS or names is None or event.name in names:
                    return True
        return False

    def close(self) -> None:
        self._inotify.close()


# ---- the installer ---------------------------------------------------------------------------------


class Installer:
    """Install, watch, re-install and clean up weir-cni on this node.

    ``plugin_file``: copy this file as the plugin (default: ``bundle.build_bytes()``).
    ``run_dir``: where the agent itself reaches the run dir, when that path differs from
    ``config.run_dir`` (the path the plugin is told); the kubeconfig and the installer's state
    (``installer/``) go there. ``observers`` get each pass's result and readiness changes.
    """

    def __init__(self, config: InstallConfig, *, flavor: Flavor = WEIR, plugin_file: str | None = None,
                 run_dir: str | None = None, observers: Sequence[InstallObserver] = (),
                 clock: Callable[[], float] = time.monotonic, throttle: Throttle | None = None) -> None:
        self.config = config
        self.flavor = flavor
        self.plugin_file = plugin_file
        self.run_dir = run_dir or config.run_dir
        self.state_dir = os.path.join(self.run_dir, "installer")
        self.kubeconfig_path = os.path.join(self.run_dir, flavor.kubeconfig_name)
        self.throttle = throttle or Throttle()
        self._observers = tuple(observers)
        self._clock = clock
        self._lock = threading.RLock()
        self._ready_cond = threading.Condition()
        self._ready = False
        self._reason = "starting"
        self._plugin: bytes | None = None
        self._target: str | None = None
        self._said_no_kubeconfig = False

    # ---- readiness -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True only while the last check found weir's config, plugin and kubeconfig in force."""
        return self._ready

    @property
    def not_ready_reason(self) -> str:
        return "" if self._ready else self._reason

    @property
    def config_path(self) -> str | None:
        """The file that holds weir's entry (absolute), once installed."""
        return None if self._target is None else os.path.join(self.config.conf_dir, self._target)

    def wait_ready(self, timeout: float | None = None) -> bool:
        with self._ready_cond:
            return self._ready_cond.wait_for(lambda: self._ready, timeout)

    def _set_ready(self, ready: bool, reason: str = "") -> None:
        with self._ready_cond:
            changed = ready != self._ready
            self._ready, self._reason = ready, ("" if ready else reason or "not ready")
            self._ready_cond.notify_all()
        if changed:
            log.info("install %s%s", "ready" if ready else "not ready", "" if ready else f": {self._reason}")
            for observer in self._observers:
                observer.set_ready(ready)

    def _result(self, result: str) -> None:
        for observer in self._observers:
            observer.install_result(result)

    # ---- one pass --------------------------------------------------------------------------------

    def install_all(self, *, stop: threading.Event | None = None, timeout: float | None = None) -> str:
        """Copy the plugin into every bin dir, write the kubeconfig, and write the CNI config if
        it is not in force; returns the path of the file holding the entry. Chained without a
        primary config, waits for one (``timeout`` seconds, else until ``stop``): raises
        :class:`NoPrimaryConfig` / :class:`Stopped`. Other failures: :class:`InstallError`."""
        try:
            with self._lock:
                self._clear_debris()
                self._copy_binaries()
                self._write_kubeconfig()
            target = self._install_config(stop or threading.Event(), timeout)
        except InstallError as exc:
            if not isinstance(exc, Stopped):
                self._result(exc.result)
            raise
        self._result(SUCCESS)
        return os.path.join(self.config.conf_dir, target)

    def _clear_debris(self) -> None:
        """Temporaries a killed pass left in the run dir and the installer's state."""
        for directory in (self.run_dir, self.state_dir, self._originals_dir()):
            remove_stale_temps(directory, self.flavor.plugin_type)

    def _plugin_bytes(self) -> bytes:
        if self.plugin_file is not None:
            with open(self.plugin_file, "rb") as f:
                return f.read()
        if self._plugin is None:
            self._plugin = bundle.build_bytes()
        return self._plugin

    def _copy_binaries(self) -> None:
        name = self.flavor.plugin_type
        try:
            data = self._plugin_bytes()
            for directory in self.config.bin_dirs:
                os.makedirs(directory, 0o755, exist_ok=True)
                remove_stale_temps(directory, self.flavor.plugin_type, [name])
                path = os.path.join(directory, name)
                if not _same_file(path, data, 0o755):
                    atomic_write(path, data, 0o755, tag=self.flavor.plugin_type)
                    log.info("installed plugin %s", path)
        except OSError as exc:
            raise InstallError(f"copy plugin: {exc}", COPY_BINARIES_FAILURE) from exc

    def _kubeconfig_text(self) -> str:
        cfg = self.config
        sa = cfg.service_account_dir
        try:
            with open(os.path.join(sa, "token"), encoding="utf-8") as f:
                token = f.read()
            ca: bytes | None = None
            if not cfg.skip_tls_verify:
                with open(cfg.kube_ca_file or os.path.join(sa, "ca.crt"), "rb") as fb:
                    ca = fb.read()
            return render_kubeconfig(host=cfg.k8s_service_host, port=cfg.k8s_service_port, token=token,
                                     protocol=cfg.k8s_service_protocol, ca_data=ca,
                                     skip_tls_verify=cfg.skip_tls_verify, user=self.flavor.kubeconfig_user,
                                     context=self.flavor.kubeconfig_context)
        except (OSError, KubeconfigError) as exc:
            raise InstallError(f"kubeconfig: {exc}", CREATE_KUBECONFIG_FAILURE) from exc

    def _write_kubeconfig(self) -> None:
        if not self.config.writes_kubeconfig:
            if not self._said_no_kubeconfig:
                log.info("KUBERNETES_SERVICE_HOST is not set (no API server, as on the embedded node): "
                         "no kubeconfig is written for the plugin")
                self._said_no_kubeconfig = True
            return
        data = self._kubeconfig_text().encode()
        try:
            os.makedirs(self.run_dir, 0o755, exist_ok=True)
            if not _same_file(self.kubeconfig_path, data, self.config.kubeconfig_mode):
                atomic_write(self.kubeconfig_path, data, self.config.kubeconfig_mode, tag=self.flavor.plugin_type)
                log.info("wrote kubeconfig %s", self.kubeconfig_path)
        except OSError as exc:
            raise InstallError(f"write kubeconfig: {exc}", CREATE_KUBECONFIG_FAILURE) from exc

    def _extra_names(self) -> set[str]:
        name = self.config.conf_name
        extra = {name, self.config.owned_filename}
        if name.endswith(".conf"):
            extra.add(name + "list")
        elif name.endswith(".conflist"):
            extra.add(name[: -len("list")])
        return extra

    def snapshot(self) -> ConfDir:
        return read_conf_dir(self.config.conf_dir, self._extra_names())

    def _verdict(self, conf: ConfDir, plan: ConfigPlan) -> Verdict:
        cfg, kind = self.config, self.flavor.plugin_type
        return check_config(conf, mode=plan.mode, target=plan.target, plugin_type=kind, conf_name=cfg.conf_name,
                            owned_filename=cfg.owned_filename, desired=cfg.entry().to_object(kind),
                            exclude=plan.exclude)

    def _evaluate(self, conf: ConfDir) -> Verdict:
        try:
            plan = plan_config(conf, self.config, self.flavor)
        except (PlanError, ConfError) as exc:
            return Verdict(str(exc))
        if plan is None:
            return Verdict(f"waiting for a primary CNI config in {self.config.conf_dir}")
        return self._verdict(conf, plan)

    def _install_config(self, stop: threading.Event, timeout: float | None) -> str:
        conf_dir = self.config.conf_dir
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            watcher = None
            try:
                with self._lock:
                    os.makedirs(conf_dir, 0o755, exist_ok=True)
                    remove_stale_temps(conf_dir, self.flavor.plugin_type)
                    watcher = _Watcher([(conf_dir, None, _DIR_EVENTS)])
                    conf = self.snapshot()
                    try:
                        plan = plan_config(conf, self.config, self.flavor)
                    except (PlanError, ConfError) as exc:
                        raise InstallError(f"CNI config: {exc}") from exc
                    if plan is not None:
                        return self._apply(conf, plan)
                self._set_ready(False, f"waiting for a primary CNI config in {conf_dir}")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NoPrimaryConfig(f"no primary CNI config in {conf_dir}")
                log.info("waiting for a primary CNI config in %s", conf_dir)
                watcher.wait(stop, left)
                if stop.is_set():
                    raise Stopped("stopped while waiting for a primary CNI config")
            except OSError as exc:
                raise InstallError(f"CNI config: {exc}") from exc
            finally:
                if watcher is not None:
                    watcher.close()

    def _apply(self, conf: ConfDir, plan: ConfigPlan) -> str:
        kind = self.flavor.plugin_type
        verdict = self._verdict(conf, plan)
        for warning in verdict.warnings:
            log.warning("%s", warning)
        if verdict.ok:
            log.debug("valid %s config present in %s, not modifying", kind, plan.target)
        else:
            log.info("(re)writing CNI config %s: %s", plan.target, verdict.problem)
            if plan.remember is not None and find_entry(conf.files.get(plan.remember), kind) is None:
                self._save_original(plan.remember, conf.files.get(plan.remember))
            for write in plan.writes:
                self._write_conf(write)
            for name in plan.removes:
                self._remove_conf(name)
        for name in plan.leftovers:
            log.info("removing %s, left over from another install mode", name)
            self._remove_conf(name)
        self._target = plan.target
        return plan.target

    def _write_conf(self, write: FileWrite) -> None:
        path = os.path.join(self.config.conf_dir, write.path)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            self._record("created-dirs", write.path.rpartition("/")[0])  # first: a crash leaves no unknown dir
            os.makedirs(directory, 0o755)
        if "/" in write.path:
            self._record("dropins", write.path)
        mode, owner = self.config.conf_file_mode, None
        if write.mode_from is not None:
            st = os.stat(os.path.join(self.config.conf_dir, write.mode_from))
            mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
        remove_stale_temps(directory, self.flavor.plugin_type)
        atomic_write(path, write.data, mode, tag=self.flavor.plugin_type, owner=owner)
        log.info("wrote CNI config %s", path)

    def _remove_conf(self, name: str) -> None:
        path = os.path.join(self.config.conf_dir, name)
        if _unlink(path):
            _fsync_dir(os.path.dirname(path))
            log.info("removed %s", path)

    # ---- state kept for cleanup --------------------------------------------------------------------

    def _originals_dir(self) -> str:
        return os.path.join(self.state_dir, "originals")

    def _save_original(self, name: str, data: bytes | None) -> None:
        if data is None:
            return
        directory = self._originals_dir()
        os.makedirs(directory, 0o700, exist_ok=True)
        path = os.path.join(directory, name)
        if not _same_file(path, data, 0o600):
            atomic_write(path, data, 0o600, tag=self.flavor.plugin_type)
            log.info("saved the original bytes of %s for cleanup", name)

    def _load_originals(self) -> dict[str, bytes]:
        directory = self._originals_dir()
        found: dict[str, bytes] = {}
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(directory):
                if not name.endswith(".tmp"):
                    with open(os.path.join(directory, name), "rb") as f:
                        found[name] = f.read()
        return found

    def _recorded(self, what: str) -> list[str]:
        try:
            with open(os.path.join(self.state_dir, what), encoding="utf-8") as f:
                return [line for line in f.read().splitlines() if line]
        except FileNotFoundError:
            return []

    def _record(self, what: str, item: str) -> None:
        items = self._recorded(what)
        if item not in items:
            os.makedirs(self.state_dir, 0o700, exist_ok=True)
            atomic_write(os.path.join(self.state_dir, what), "".join(f"{i}\n" for i in [*items, item]).encode(),
                         0o600, tag=self.flavor.plugin_type)

    # ---- check, watch, loop --------------------------------------------------------------------------

    def check(self) -> Verdict:
        """Is weir in force: the CNI config (Istio's ``checkValidCNIConfig``, plus entry drift),
        the plugin in every bin dir, and the kubeconfig when one is due?"""
        verdict = self._evaluate(self.snapshot())
        if not verdict.ok:
            return verdict
        for directory in self.config.bin_dirs:
            if not os.path.isfile(os.path.join(directory, self.flavor.plugin_type)):
                return Verdict(f"plugin missing from {directory}", verdict.warnings)
        if self.config.writes_kubeconfig and not os.path.isfile(self.kubeconfig_path):
            return Verdict(f"kubeconfig {self.kubeconfig_path} missing", verdict.warnings)
        return verdict

    def _watch_targets(self) -> list[tuple[str, frozenset[str] | None, int]]:
        cfg, name = self.config, self.flavor.plugin_type
        targets: list[tuple[str, frozenset[str] | None, int]] = [(cfg.conf_dir, None, _DIR_EVENTS)]
        if self._target is not None and "/" in self._target:  # the drop-in's directory
            targets.append((os.path.join(cfg.conf_dir, os.path.dirname(self._target)), None, _DIR_EVENTS))
        targets += [(d, frozenset({name}), _DIR_EVENTS | flags.ATTRIB) for d in cfg.bin_dirs]
        if cfg.writes_kubeconfig:
            targets.append((cfg.service_account_dir, None, _DIR_EVENTS))
        return targets

    def _sleep_watch(self, stop: threading.Event) -> None:
        """Ready while the install stays valid; return on the first change (or when invalid)."""
        watcher = _Watcher(self._watch_targets())  # before the check: no change slips between
        try:
            verdict = self.check()
            if not verdict.ok:
                self._set_ready(False, verdict.problem or "")
                return
            self._set_ready(True)
            watcher.wait(stop)
        finally:
            watcher.close()

    def _fight_hint(self) -> str:
        path = self.config_path or ""
        if "cilium" in os.path.basename(path).lower():
            return f"Cilium CNI was detected ({path}): ensure 'cni.exclusive=false' in the Cilium configuration."
        return "With Cilium, set 'cni.exclusive=false' in the Cilium configuration."

    def run(self, stop: threading.Event) -> None:
        """Install, then watch and re-install until ``stop`` is set. A failed pass (no primary,
        a config that cannot take the entry, an I/O error) is logged, makes the installer not
        ready, and is retried on the next change or after ``RETRY_SECONDS``."""
        while not stop.is_set():
            try:
                self.install_all(stop=stop)
            except Stopped:
                break
            except InstallError as exc:
                log.error("install failed: %s", exc)
                self._set_ready(False, f"install failed: {exc}")
                watcher = _Watcher(self._watch_targets())
                try:
                    watcher.wait(stop, RETRY_SECONDS)
                finally:
                    watcher.close()
                continue
            self._sleep_watch(stop)
            if stop.is_set():
                break
            verdict = self.check()
            if verdict.ok:
                continue  # a change that left us in force (or a binary / token change): refresh quietly
            self._set_ready(False, verdict.problem or "")
            log.info("CNI setup changed: %s; re-installing", verdict.problem)
            delay = self.throttle.reserve(self._clock())
            if self.throttle.should_warn():
                log.warning("the CNI config has been re-installed %d times in a short period: another component "
                            "keeps reverting weir's %s entry (weir puts it back each time). %s",
                            self.throttle.hits, self.flavor.plugin_type, self._fight_hint())
            if delay:
                stop.wait(delay)
        self._set_ready(False, "stopped")

    # ---- cleanup ---------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Take weir off the node (Istio's ``Cleanup``, on SIGTERM): the entry out of every
        conflist weir wrote into (original bytes back when nobody changed them), weir's own
        config files (standalone, owned, drop-in) deleted, then the kubeconfig and the plugin in
        every bin dir. Best effort: every step is tried; the failures are raised together."""
        with self._lock:
            self._set_ready(False, "cleaned up")
            cfg = self.config
            failures: list[str] = []
            try:
                conf = self.snapshot()
                plan = plan_cleanup(conf, cfg, self.flavor, self._load_originals(), self._recorded("dropins"))
                for write in plan.writes:
                    self._write_conf(write)
                for name in plan.removes:
                    self._remove_conf(name)
                for folder in self._recorded("created-dirs"):
                    with contextlib.suppress(FileNotFoundError):
                        self._rmdir_if_empty(os.path.join(cfg.conf_dir, folder))
                remove_stale_temps(cfg.conf_dir, self.flavor.plugin_type)
            except (OSError, ConfError) as exc:
                failures.append(f"CNI config: {exc}")
            for path in [self.kubeconfig_path] + [os.path.join(d, self.flavor.plugin_type) for d in cfg.bin_dirs]:
                try:
                    if _unlink(path):
                        log.info("removed %s", path)
                except OSError as exc:
                    failures.append(f"{path}: {exc}")
            for directory in cfg.bin_dirs:
                remove_stale_temps(directory, self.flavor.plugin_type, [self.flavor.plugin_type])
            self._clear_debris()
            if not failures:
                self._forget_state()
            self._target = None
            if failures:
                raise InstallError("cleanup incomplete: " + "; ".join(failures))
            log.info("cleanup complete: %s removed from %s", self.flavor.plugin_type, cfg.conf_dir)

    def _rmdir_if_empty(self, path: str) -> None:
        try:
            os.rmdir(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            log.info("leaving %s: it holds other drop-ins", path)

    def _forget_state(self) -> None:
        originals = self._originals_dir()
        for directory in (originals, self.state_dir):
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(directory):
                    path = os.path.join(directory, name)
                    if not os.path.isdir(path):
                        os.unlink(path)
                os.rmdir(directory)


__all__ = ["InstallError", "InstallObserver", "Installer", "NoPrimaryConfig", "Stopped", "atomic_write",
           "read_conf_dir", "remove_stale_temps"]
